#!/usr/bin/perl
# Verify the DKIM signatures of a message with Perl's Mail::DKIM (the verifier of
# SpamAssassin and Amavis), as a second implementation independent of dkimpy.
#
#   perl mail_dkim_verify.pl NAME=RECORD ... < messages
#
# Input: one or more messages, each preceded by a line holding its length in bytes.
# DNS is never used: TXT lookups are answered from the NAME=RECORD arguments
# (NAME without the trailing dot); any other name is NXDOMAIN.
# Prints one line per signature:
#   index<TAB>result<TAB>domain<TAB>selector<TAB>algorithm<TAB>detail
use strict;
use warnings;
use Mail::DKIM::Verifier;
use Mail::DKIM::DNS;
use Net::DNS;

my %records;
for my $arg (@ARGV) {
    my ($name, $record) = split /=/, $arg, 2;
    $records{lc $name} = $record;
}

{
    no warnings 'redefine';
    *Mail::DKIM::DNS::query = sub {
        my ($domain, $type) = @_;
        $domain = lc $domain;
        $domain =~ s/\.$//;
        if (uc $type eq 'TXT' && exists $records{$domain}) {
            my $rec = $records{$domain};
            my @chunks = unpack('(A255)*', $rec);
            $@ = 'NOERROR';
            return (Net::DNS::RR->new(name => $domain, type => 'TXT', txtdata => \@chunks));
        }
        $@ = 'NXDOMAIN';
        return;
    };
}

binmode STDIN;
binmode STDOUT;
my $index = 0;
while (defined(my $len = <STDIN>)) {
    chomp $len;
    last if $len eq '';
    my $message = '';
    while (length($message) < $len) {
        my $got = read(STDIN, $message, $len - length($message), length($message));
        die "short input\n" unless $got;
    }
    my $dkim = Mail::DKIM::Verifier->new();
    $dkim->PRINT($message);
    $dkim->CLOSE;
    my @sigs = $dkim->signatures;
    print "$index\tnone\t-\t-\t-\tno signature\n" unless @sigs;
    for my $sig (@sigs) {
        printf "%d\t%s\t%s\t%s\t%s\t%s\n", $index, $sig->result, $sig->domain,
            $sig->selector, $sig->algorithm, ($sig->result_detail // '');
    }
    $index++;
}
