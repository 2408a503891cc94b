"""CLI of the bundled benchmark harness: ``fastmta bench`` (issue #6)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from fastmta.cli import main
from fastmta.errors import FastMTAError


def print_bench(r: dict) -> None:
    """The human-readable bench report."""
    e = click.echo
    n = r["messages"]
    e(f"fastmta bench: profile {r['profile']}, {n} messages of {r['size_bytes']} bytes, "
      f"{r['domains']} domains over {r['sites']} MX sites")
    if len(r.get("message_mix", [])) > 1:
        e("  message mix: " + ", ".join(f"{m['kind']} {m['bytes'] // 1000} KB x "
                                       f"{m['recipients']}" for m in r["message_mix"]))
    e(f"  engine: {r['workers']} workers, core {r['impl']}, DKIM "
      f"{('on, ' + r['dkim_algorithm']) if r['dkim'] else 'off'}"
      + (f", fixed {r['fixed_connections']} connections/site" if r["fixed_connections"]
         else ", adaptive shaping")
      + f"; sink: {r['sink_procs']} MX processes; durable LMDB spool")
    e("throughput")
    e(f"  injection      {r['inject_msgs_per_s']:>10,.0f} msgs/s   ({r['inject_s']:.2f} s)")
    e(f"  delivery       {r['deliver_msgs_per_s']:>10,.0f} msgs/s   (first to last acceptance)")
    e(f"  sending        {r['delivered_msgs_per_s']:>10,.0f} msgs/s   (first injected to last "
      f"acceptance; {r['mbytes_per_s']:.1f} MB/s)")
    e(f"  end to end     {r['msgs_per_s']:>10,.0f} msgs/s   ({r['elapsed_s']:.2f} s from the "
      f"first injected recipient to the last final one)")
    e("cost")
    e(f"  CPU fastmta    {r['cpu_s_per_1k_fastmta']:>10.3f} s per 1,000 msgs   "
      f"(total {r['cpu_s_fastmta']:.1f} s: workers {r['cpu_s_fastmta_workers']:.1f}, "
      f"supervisor+injection {r['cpu_s_fastmta_main']:.1f})")
    e(f"  CPU sink       {r['cpu_s_per_1k_sink']:>10.3f} s per 1,000 msgs   "
      f"(total {r['cpu_s_sink']:.1f} s)")
    roles = ", ".join(f"{k} {v:.0f} MB" for k, v in sorted(r["rss_peak_mb_by_role"].items()))
    e(f"  peak RSS       {r['rss_peak_mb']:>10.1f} MB (largest fastmta process; {roles})")
    anon = ", ".join(f"{k} {v:.0f} MB" for k, v in sorted(r["anon_peak_mb_by_role"].items()))
    e(f"  peak private   {r['anon_peak_mb']:>10.1f} MB (RSS without the spool's mapped file "
      f"pages; {anon})")
    e("latency injection -> acceptance")
    e(f"  p50 {r['latency_ms_p50']:,.0f} ms   p99 {r['latency_ms_p99']:,.0f} ms")
    e("SMTP")
    e(f"  connections {r['connections']:,}   messages/connection {r['msgs_per_connection']}   "
      f"attempts {r['attempts']:,}   throttle replies {r['throttle_replies']:,} "
      f"({r['throttle_pct_of_attempts']:.2f}% of attempts)"
      + (f" {r['throttle_replies_by_code']}" if r["throttle_replies"] else ""))
    if r.get("shaping"):
        e("shaping (rate-capped providers)")
        for name, s in r["shaping"].items():
            pct = (f"{s['goodput_pct_of_cap']:.0f}% over {s['windows']} min"
                   if s["goodput_pct_of_cap"] is not None else "finished within a minute")
            e(f"  {name:<14} goodput {s['goodput_per_s']:>8.1f}/s of cap {s['cap_per_s']:.1f}/s "
              f"({pct}), {s['delivered']} delivered over {s['span_s']:.0f} s")
            if s.get("minutes_pct_of_cap"):
                conv = (f"{s['converged_s']:.0f} s" if s.get("converged_s") is not None
                        else "never")
                e(f"  {'':<14} per minute {', '.join(f'{m:.0f}%' for m in s['minutes_pct_of_cap'])}"
                  f" of cap; >= 90% in every later minute from {conv}")
    for name, f in (r.get("ramp") or {}).items():
        e(f"ramp {name}: steady {f['steady_per_s']}/s; 90% of it reached after "
          f"{f['reached_90pct_steady_s']} s (a {f['bucket_ms']}-ms bucket), "
          f"{f['reached_90pct_steady_1s_s']} s (a 1-s window)")
        if f.get("cap_per_s"):
            e(f"  {'':<14} hidden cap {f['cap_per_s']}/s: 90% of it after "
              f"{f['reached_90pct_cap_s']} s (a 1-s window), "
              f"{f['reached_90pct_cap_bucket_s']} s (a bucket)")
    if r.get("time_to_90pct_cap_s") is not None or "state" in r:
        st = r.get("state") or {}
        e(f"memory: time to 90% of the hidden cap {r.get('time_to_90pct_cap_s')} s, of the "
          f"steady rate {r.get('time_to_90pct_steady_s')} s; "
          f"throttle replies {r['throttle_replies']}"
          + (f"; state {st['dir']}: {st['records_loaded']} records loaded, "
             f"{st['sites_restored']} sites restored, {st['records_saved']} saved"
             if st else ""))
    e("audit")
    e(f"  delivered {r['delivered']:,}  bounced {r['bounced']:,}  expired {r['expired']:,}  "
      f"pending {r['pending']}  lost {r['lost']}  duplicates {r['duplicates']}  "
      f"unexpected {r['unexpected']}  -> {'OK' if r['audit_ok'] else 'FAILED'}")
    if r["dkim"]:
        e(f"  DKIM: {r['dkim_signed']:,} accepted messages signed -> "
          f"{'OK' if r['dkim_ok'] else 'NOT SIGNED'}")
    if r.get("feedback"):
        f = r["feedback"]
        e(f"  feedback: sim sent {f['planned']} -> applied {f['effects']} -> "
          f"{'OK (each once)' if f['all_applied_once'] else 'MISMATCH'}")
    for p in r["audit_problems"]:
        e(f"    {p}")


def print_nodes(r: dict) -> None:
    """The human-readable report of ``--nodes N``."""
    e = click.echo
    e(f"fastmta bench: profile {r['profile']}, {r['messages']} messages over {r['nodes']} "
      f"nodes ({r['workers_per_node']} worker(s) each), provider cap "
      f"{r['cap_msgs_per_s']:.0f} msgs/s and {r['cap_connections']} connections for all")
    for p in [r, *([r["without_cluster"]] if "without_cluster" in r else [])]:
        e(f"  cluster {p['cluster']:<5}  accepted {p['observed_msgs_per_s']:>7.1f} msgs/s "
          f"({p['observed_pct_of_cap']:.1f}% of cap), attempted "
          f"{p['attempted_msgs_per_s']:.1f}/s, peak connections {p['peak_connections']} "
          f"of {p['cap_connections']}, refusals {p['refusals']} (rate "
          f"{p['refusals_rate']}, connections {p['refusals_connections']})")
        e(f"  {'':<13}  delivered {p['delivered']} by node {p['delivered_by_node']} in "
          f"{p['elapsed_s']:.1f} s; lost {p['lost']} duplicates {p['duplicates']} pending "
          f"{p['pending']} -> {'OK' if p['audit_ok'] else 'FAILED'}"
          + (f"; Redis round trips/msg {p['redis_round_trips_per_msg']} (commands incl. "
             f"inside Functions {p['redis_commands_per_msg']})" if "redis_round_trips" in p
             else ""))
    if "leases_left" in r:
        e(f"  leases left in Redis after the run: {r['leases_left']}")


def _done_nodes(result: dict, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(result, indent=1, sort_keys=True))
    else:
        print_nodes(result)
    if not result["audit_ok"]:
        sys.exit(3)


def _warmup(sources, days, day_s, workers, timeout_s, as_json) -> None:
    from fastmta.bench.warmup import run_warmup
    from fastmta.runtime import run

    try:
        r = run(run_warmup(sources, days, day_s, workers, timeout_s))
    except (FastMTAError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(r, indent=1, sort_keys=True))
    else:
        e = click.echo
        e(f"fastmta bench warmup: {r['sources']} sources, {r['days']} days of "
          f"{r['day_s']} s, plan {r['plan']}; {r['messages']} messages")
        for p in r["per_source"]:
            caps = " ".join(f"{d['sent']}/{d['cap'] if d['cap'] is not None else '-'}"
                            for d in p["days"])
            e(f"  {p['source']} {p['provider']:<13} {'cold' if p['cold'] else 'warm'} "
              f"stage {p['stage']}: sent/cap per day {caps}; throttles "
              f"{p['throttle_replies']}, blocks {p['block_replies']}")
        e(f"cap_violations {r['cap_violations']}  overflowed {r['overflowed']}  deferred "
          f"{r['deferred']}  throttle replies {r['throttle_replies']} "
          f"({r['throttle_pct_of_attempts']}% of attempts)")
        e(f"audit: delivered {r['delivered']} bounced {r['bounced']} expired {r['expired']}"
          f" pending {r['pending']} lost {r['lost']} -> {'OK' if r['audit_ok'] else 'FAILED'}")
    if not r["audit_ok"] or r["cap_violations"]:
        sys.exit(3)


@main.command("bench")
@click.option("--messages", type=int, default=10_000, show_default=True)
@click.option("--domains", type=int, default=1_000, show_default=True)
@click.option("--sites", type=int, default=100, show_default=True,
              help="MX sites (distinct MX host sets) the domains are spread over")
@click.option("--workers", type=int, default=0, help="engine workers (default: one per core)")
@click.option("--size", "size", type=int, default=3_000, show_default=True,
              help="message size in bytes")
@click.option("--profile", default="null", show_default=True,
              help="bench profile: null, realistic, throttled, ratecap, campaign, capped, "
                   "memory, warmup or a path to a .toml file")
@click.option("--dkim/--no-dkim", default=None,
              help="sign every message (default: as the profile says; campaign signs)")
@click.option("--dkim-key", "dkim_key", type=click.Choice(["rsa2048", "ed25519"]),
              default=None, help="key type with --dkim (default: the profile's, else rsa2048)")
@click.option("--sink-procs", type=int, default=2, show_default=True,
              help="processes of the simulated MX hosts")
@click.option("--fixed-connections", type=int, default=0,
              help="turn adaptive shaping off: this many connections per site")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="fastmta config (shaping, spool...); DNS and SMTP ports are the bench's")
@click.option("--spool", "spool_dir", default=None, help="spool directory (default: temp)")
@click.option("--timeout", "timeout_s", type=float, default=1800.0, show_default=True)
@click.option("--write-world", type=click.Path(dir_okay=False), default=None,
              help="also write the scaled world as a sim profile (for `fastmta sim serve`)"
                   " and exit")
@click.option("--write-recipients", type=click.Path(dir_okay=False), default=None,
              help="with --write-world: also write the --messages recipients (CSV) and "
                   "the message template (FILE.eml beside it)")
@click.option("--feedback", is_flag=True,
              help="VERP + the inbound listener; during the run the simulated providers send "
                   "async bounces (5%), complaints (0.5%), auto-replies (1%); audited")
@click.option("--state", "state_dir", type=click.Path(file_okay=False), default=None,
              help="keep the delivery memory (learned per-site state) in DIR between runs")
@click.option("--sources", type=int, default=4, show_default=True,
              help="--profile warmup: loopback source addresses (1 warm, the rest new)")
@click.option("--days", type=int, default=10, show_default=True,
              help="--profile warmup: compressed days to run")
@click.option("--day-seconds", type=float, default=12.0, show_default=True,
              help="--profile warmup: real seconds per egress day")
@click.option("--nodes", type=int, default=1, show_default=True,
              help="fastmta nodes, each its own process (supervisor, workers, spool), "
                   "against one provider capped for all (--profile capped)")
@click.option("--cluster", "cluster", type=click.Choice(["none", "redis"]), default="none",
              show_default=True,
              help="share the limits through a throwaway redis-server on loopback; the "
                   "same run without it is measured too (docs/scale.md)")
@click.option("--pairs", type=int, default=3, show_default=True,
              help="--cluster redis on one node: pairs of runs with and without Redis, "
                   "interleaved; medians and the spread are reported")
@click.option("--json", "as_json", is_flag=True, help="one JSON object with every figure")
def bench_cmd(messages, domains, sites, workers, size, profile, dkim, dkim_key, sink_procs,
              fixed_connections, config_path, spool_dir, timeout_s, write_world,
              write_recipients, feedback, state_dir, sources, days, day_seconds,
              nodes, cluster, pairs, as_json) -> None:
    """Benchmark the full engine against the simulated internet (loopback only).

    ``--profile warmup --sources N --days D``: IP warm-up over D compressed days
    (docs/egress.md); ``--profile throttled --state DIR`` twice: the delivery memory
    (time to 90% of the hidden per-second caps in 250-ms buckets, throttle replies);
    ``--profile ratecap``: sliding-minute rate caps (adaptive rate score);
    ``--profile capped --nodes 3 --cluster redis``: three nodes sharing one provider's
    caps through Redis, then the same without the cluster (docs/scale.md)."""
    if profile == "warmup":
        _warmup(sources, days, day_seconds, workers, timeout_s, as_json)
        return
    from fastmta import bench as b
    from fastmta.bench.profile import world_toml
    from fastmta.config import load_config
    from fastmta.runtime import run

    try:
        if write_recipients and not write_world:
            raise click.UsageError("--write-recipients goes with --write-world")
        if write_world:
            prof = b.load_profile(profile)
            world = b.expand(prof, domains, sites)
            Path(write_world).write_text(world_toml(world))
            if write_recipients:
                with open(write_recipients, "w") as f:
                    f.write("email\n")
                    for e in b.recipients(prof, world, messages):
                        f.write(e + "\n")
                tpl = Path(write_recipients).with_suffix(".eml")
                tpl.write_bytes(b.message_template(size))
                click.echo(f"wrote {write_recipients} ({messages} recipients) and {tpl} "
                           "(template: {{email}} is replaced per recipient)")
            click.echo(f"wrote {write_world}: {len(world.domains)} domains, "
                       f"{len(world.hosts)} MX hosts; serve it with "
                       f"`fastmta sim serve --profile {write_world} --routes routes.txt`")
            return
        cfg = load_config(config_path) if config_path else None

        def progress(p: dict) -> None:
            if not as_json and sys.stderr.isatty():
                sys.stderr.write(f"\r[{p['elapsed_s']:6.1f}s] sent {p['sent']}  failed "
                                 f"{p['failed']}  pending {p['pending']}   ")
                sys.stderr.flush()

        opts = b.BenchOptions(messages=messages, domains=domains, sites=sites, workers=workers,
                            size=size, profile=profile, dkim=dkim, sink_procs=sink_procs,
                            dkim_algorithm={"ed25519": "ed25519-sha256",
                                            "rsa2048": "rsa-sha256"}.get(dkim_key or "", ""),
                            config=cfg, spool_dir=spool_dir, timeout_s=timeout_s,
                            fixed_connections=fixed_connections, progress=progress,
                            feedback=feedback, state_dir=state_dir)
        if nodes > 1:
            from fastmta.bench.cluster import run_cluster_bench

            result = run(run_cluster_bench(opts, nodes, cluster))
            _done_nodes(result, as_json)
            return
        if cluster == "redis":
            from fastmta.bench.cluster import run_overhead

            result = run(run_overhead(opts, pairs))
        else:
            result = run(b.run_bench(opts))
        if not as_json and sys.stderr.isatty():
            sys.stderr.write("\n")
    except FastMTAError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(result, indent=1, sort_keys=True))
    else:
        print_bench(result)
        if result.get("cluster") == "redis":
            w = result["without_cluster"]
            for i, p in enumerate(result["pairs"]):
                click.echo(f"  pair {i + 1} ({p['order']}): redis "
                           f"{p['redis']['msgs_per_s']:,.0f} msgs/s, without "
                           f"{p['alone']['msgs_per_s']:,.0f}: ratio {p['ratio']:.2f}")
            click.echo(f"cluster: redis {result['msgs_per_s_median']:,.0f} msgs/s vs "
                       f"{w['msgs_per_s_median']:,.0f} without (medians; ratio median "
                       f"{result['cluster_throughput_ratio']:.2f}, range "
                       f"{result['cluster_throughput_ratio_min']:.2f}-"
                       f"{result['cluster_throughput_ratio_max']:.2f}, CPU per message "
                       f"ratio {result['cpu_ratio']:.2f}); Redis round trips "
                       f"{result['redis_round_trips']:,} = "
                       f"{result['redis_round_trips_per_msg']} per delivered message "
                       f"(commands incl. inside Functions {result['redis_commands_per_msg']});"
                       f" leases left {result['leases_left']}")
    if not result["audit_ok"] or (result["dkim"] and not result.get("dkim_ok")):
        sys.exit(3)
