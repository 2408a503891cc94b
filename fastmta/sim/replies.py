"""The reply texts of the simulated MX hosts (``sim/session.py``), worded as real
providers word them so the classifier sees realistic input."""

R_GREETING = b"220 %s ESMTP fastmta-sim ready\r\n"
R_OK = b"250 2.0.0 OK\r\n"
R_MAIL_OK = b"250 2.1.0 Sender OK\r\n"
R_RCPT_OK = b"250 2.1.5 Recipient OK\r\n"
R_DATA = b"354 Start mail input; end with <CRLF>.<CRLF>\r\n"
R_QUEUED = b"250 2.0.0 OK: queued as %d\r\n"
QUEUED_PREFIX = R_QUEUED.partition(b"%")[0]
R_BYE = b"221 2.0.0 Bye\r\n"
R_RSET = b"250 2.0.0 Reset OK\r\n"
R_UNKNOWN = (b"550-5.1.1 The email account that you tried to reach does not exist. Please\r\n"
             b"550 5.1.1 try double-checking the recipient's email address for typos.\r\n")
R_DISABLED = b"550 5.2.1 The email account that you tried to reach is disabled.\r\n"
R_FULL = (b"452-4.2.2 The email account that you tried to reach is over quota. Please\r\n"
          b"452 4.2.2 direct the recipient to the help center.\r\n")
R_TEMPFAIL = b"451 4.3.0 Temporary local problem, please try again later\r\n"
R_GREY = b"450 4.2.0 Greylisted, please try again in %d seconds\r\n"
R_BLOCK = (b"550 5.7.1 Unfortunately, messages from [%s] weren't sent. Please contact your "
           b"Internet service provider since part of their network is on our block list "
           b"(S3150).\r\n")
R_TOO_MANY_CONN = (b"421 4.3.2 The maximum number of concurrent server connections has "
                   b"exceeded a limit, closing transmission channel\r\n")
R_RATE = (b"421-4.7.28 [%s] Our system has detected an unusual rate of unsolicited mail\r\n"
          b"421 4.7.28 originating from your IP address; it has been rate limited.\r\n")
R_TOO_MANY_RCPT = b"452 4.5.3 Too many recipients\r\n"
# Gmail's published recipient-rate deferral (support.google.com/a/answer/3726730)
R_RCPT_RATE = (b"450-4.2.1 The user you are trying to contact is receiving mail too quickly.\r\n"
               b"450 4.2.1 Please resend your message at a later time.\r\n")
R_TRANSIENT_421 = b"421 4.3.0 Temporary System Problem. Try again later.\r\n"
R_TRANSIENT_421_GREETING = b"421 4.3.2 Service not available, closing transmission channel\r\n"
R_TOO_MANY_MSG = b"421 4.7.0 Too many messages for this session, closing connection\r\n"
R_TOO_BIG = b"552 5.3.4 Message size exceeds fixed maximum message size\r\n"
R_BAD_SEQ = b"503 5.5.1 Bad sequence of commands\r\n"
R_NO_VALID_RCPT = b"554 5.5.1 No valid recipients\r\n"
R_SYNTAX = b"501 5.5.4 Syntax error in parameters\r\n"
R_UNRECOGNISED = b"500 5.5.2 Command unrecognized\r\n"
R_LINE_TOO_LONG = b"500 5.5.2 Line too long\r\n"
R_TLS_READY = b"220 2.0.0 Ready to start TLS\r\n"
R_NO_TLS = b"454 4.7.0 TLS not available\r\n"
R_GARBAGE = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/html\r\n\r\n<html>\r\n"
