"""The engine's Python API: prepare, inject and run a delivery (the CLI is a thin shell).

- ``domain_router(domains, cfg)``: resolves the MX of every distinct domain once and
  returns ``shard_of(domain)``: domain -> MX site -> routing key (provider or site) ->
  shard, so one site (and one provider) is always handled by one worker.
- ``inject_file(...)``: analysis-free injection of a recipients file with that router.
- ``run(cfg, spool_path, delivery_ids, ...)``: run the supervisor until those deliveries
  are final (or a signal), with an optional progress callback.
- ``summary(spool, did)``: the KPIs as a report dict.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable, Sequence

from fastmta.config import Config
from fastmta.engine.providers import load_providers
from fastmta.engine.routing import routing_key, shard_of
from fastmta.engine.supervisor import Progress, Supervisor


async def domain_router(domains: Iterable[str], cfg: Config, *,
                        concurrency: int = 128,
                        spool_path: str | os.PathLike[str] | None = None
                        ) -> Callable[[str], int]:
    """``shard_of(domain)`` routed by each domain's MX site (see module docstring).

    Domains that do not resolve (NXDOMAIN, SERVFAIL...) are routed by their own name;
    the worker resolves again and fails or retries them.  With ``spool_path`` (and
    ``[compliance] mta_sts``) each domain's ``_mta-sts`` TXT record is looked up in the
    same pass and saved for the workers (``engine/sts_prefetch.py``).
    """
    from fastmta.dns.resolver import Resolver

    providers = load_providers(cfg.providers, shipped=cfg.shaping.use_provider_defaults)
    resolver = Resolver(cfg.dns, cfg.smtp)
    sem = asyncio.Semaphore(concurrency)
    keys: dict[str, str] = {}
    sts_ids: dict[str, str] = {}
    sts = None
    if spool_path is not None and cfg.compliance.mta_sts:
        from fastmta.engine import sts_prefetch

        sts = sts_prefetch.fetcher_for(cfg)

    async def txt(domain: str) -> None:
        pid = await sts_prefetch.lookup(sts, domain)
        if pid is not None:
            sts_ids[domain] = pid

    async def one(domain: str) -> None:
        async with sem:
            try:
                if sts is None:
                    mx = await resolver.resolve_mx(domain)
                else:
                    mx, _ = await asyncio.gather(resolver.resolve_mx(domain), txt(domain))
            except Exception:  # any resolver trouble: route by name, the worker decides
                keys[domain] = f"domain:{domain}"
                return
        if mx.error is None and mx.site:
            keys[domain] = routing_key(mx.site, providers)
        else:
            keys[domain] = f"domain:{domain}"

    await asyncio.gather(*(one(d) for d in set(domains)))
    if sts is not None:
        sts_prefetch.save(spool_path, sts_ids)
    shards = cfg.engine.shards

    def route(domain: str) -> int:
        return shard_of(keys.get(domain) or f"domain:{domain}", shards)

    route.keys = keys  # type: ignore[attr-defined]
    return route


def recipient_domains(path: str | os.PathLike[str], fmt: str | None = None) -> set[str]:
    """The distinct domains of the valid addresses of a recipients file (streamed)."""
    from fastmta.delivery import open_recipients
    from fastmta.delivery.injection import valid_domains

    with open_recipients(path, fmt) as reader:
        return valid_domains(reader)


async def inject_file(spool, cfg: Config, recipients: str | os.PathLike[str],
                      message: bytes, *, mail_from: str = "",
                      validity_s: float | None = None, name: str = "",
                      fmt: str | None = None, shards: int | None = None,
                      on_excluded=None, route_by_mx: bool = True, pool: str = ""):
    """Route and inject a recipients file; returns the delivery ``Analysis``."""
    from fastmta.delivery import inject, open_recipients
    from fastmta.delivery.injection import check_delivery_inputs
    from fastmta.dkim.signers import key_check

    # everything that needs no recipient first: no DNS work for a delivery refused anyway
    check_delivery_inputs(message, mail_from=mail_from, validity_s=validity_s,
                          cfg=cfg.delivery)
    if pool:  # an unknown egress pool is refused before anything is injected
        from fastmta.egress.model import build_model

        build_model(cfg).pool_for("", pool)
    has_key = key_check(cfg.dkim)
    if route_by_mx:
        route = await domain_router(recipient_domains(recipients, fmt), cfg,
                                    spool_path=spool.path)
    else:
        n = shards or cfg.engine.shards

        def route(domain: str) -> int:
            return shard_of(f"domain:{domain}", n)

    reader = open_recipients(recipients, fmt)
    try:
        return inject(spool, reader, message, mail_from=mail_from, validity_s=validity_s,
                      cfg=cfg.delivery, shard_of=route, shards=shards or cfg.engine.shards,
                      name=name or os.path.basename(os.fspath(recipients)),
                      dkim_has_key=has_key, on_excluded=on_excluded, pool=pool)
    finally:
        reader.close()


async def run(cfg: Config, spool_path: str | os.PathLike[str],
              delivery_ids: Sequence[int] = (), *, workers: int | None = None,
              progress: Callable[[Progress], None] | None = None,
              forever: bool = False, worker_target=None) -> Supervisor:
    """Run the worker pool until the deliveries are final; returns the supervisor.
    ``worker_target``: the workers' entry point (``cluster.node.worker_target``)."""
    sup = Supervisor(cfg, spool_path, workers=workers, progress=progress,
                     worker_target=worker_target)
    inbound = await _start_inbound(cfg, spool_path)
    try:
        await sup.run(list(delivery_ids), forever=forever)
    finally:
        if inbound is not None:
            await inbound.close()
    return sup


async def _start_inbound(cfg: Config, spool_path: str | os.PathLike[str]):
    """The feedback listener beside the pool when ``[feedback] listen`` is set."""
    fb = cfg.feedback
    if not fb.listen:
        return None
    from fastmta.feedback.listener import InboundServer
    from fastmta.spool import Spool

    host, _, port = fb.listen.rpartition(":")
    srv = InboundServer(cfg, Spool.open(spool_path, cfg.spool))
    await srv.start(host.strip("[]") or "127.0.0.1", int(port))
    if fb.http_listen:  # one-click unsubscribe beside it (closed with the listener)
        from fastmta.feedback.unsubscribe import UnsubscribeServer

        web = UnsubscribeServer(srv.proc, srv.committer)
        h, _, p = fb.http_listen.rpartition(":")
        await web.start(h.strip("[]") or "127.0.0.1", int(p))
        srv.on_close.append(web.close)
    return srv


def summary(spool, did: int) -> dict:
    """The delivery report (``fastmta.ops.report.build_report``: KPIs from the counters)."""
    from fastmta.ops.report import build_report

    return build_report(spool, did)
