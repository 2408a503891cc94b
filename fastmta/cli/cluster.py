"""``fastmta cluster status [--json]``: the shared limits held in Redis (docs/scale.md)."""

from __future__ import annotations

import json
import sys

import click

from fastmta.cli import main


@main.group("cluster")
def cluster_group() -> None:
    """Nodes sharing limits through Redis ([cluster] redis_url)."""


@cluster_group.command("status")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              default=None, help="fastmta config with a [cluster] redis_url")
@click.option("--redis-url", default=None, help="instead of the config's [cluster] redis_url")
@click.option("--json", "as_json", is_flag=True, help="one JSON object")
def status_cmd(config_path, redis_url, as_json) -> None:
    """Nodes seen, connection leases per key and node, learned limits and suspensions.

    Exit status 2 when Redis cannot be reached (the nodes then send on their shares)."""
    import msgspec

    from fastmta.cluster.status import cluster_status
    from fastmta.config import Config, load_config

    cfg = load_config(config_path) if config_path else Config()
    cl = cfg.cluster
    if redis_url:
        cl = msgspec.structs.replace(cl, redis_url=redis_url)
    if not cl.redis_url:
        raise click.UsageError("no cluster: give --redis-url or a config with "
                               "[cluster] redis_url")
    st = cluster_status(cl)
    if as_json:
        click.echo(json.dumps(st, indent=1, sort_keys=True))
    else:
        e = click.echo
        if not st["reachable"]:
            e(f"Redis {cl.redis_url}: unreachable ({st.get('error')})")
        else:
            e(f"Redis {cl.redis_url}: {len(st['nodes'])} node(s)")
            for n in st["nodes"]:
                e(f"  {n['node']:<20} seen {n['seen_s_ago']:.1f} s ago, "
                  f"{st['leases_by_node'].get(n['node'], 0)} lease(s)")
            e(f"leases ({len(st['leases'])} key(s))")
            for row in st["leases"]:
                nodes = ", ".join(f"{k} {v}" for k, v in sorted(row["by_node"].items()))
                e(f"  {row['key']:<50} {row['held']:>4}  ({nodes})")
            if st["state"]:
                e("learned")
                for row in st["state"]:
                    parts = [f"{k} {row[k]}" for k in ("limit", "rate", "suspended_s")
                             if k in row]
                    e(f"  {row['key']:<50} {', '.join(parts)}")
    if not st["reachable"]:
        sys.exit(2)
