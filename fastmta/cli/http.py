"""``fastmta serve``: the HTTP API and the dashboard on a spool (fastmta.http)."""

from __future__ import annotations

import click

from fastmta.cli import main
from fastmta.cli.send import _config, _setup_logging
from fastmta.http.server import DEFAULT_LISTEN


def make_server(cfg, spool_path: str, listen: str, token: str | None, max_upload_mb: int):
    """An ``HttpServer`` (refuses a non-loopback address without a token)."""
    from fastmta.http.auth import is_loopback
    from fastmta.http.server import HttpServer, parse_listen, resolve_token

    host, _port = parse_listen(listen)
    tok, generated = resolve_token(token)
    if generated and not is_loopback(host):
        raise click.ClickException(f"listening on {host} (not loopback) needs --token or "
                                   "FASTMTA_HTTP_TOKEN")
    return HttpServer(cfg, spool_path, listen, token=tok,
                      max_upload_bytes=max_upload_mb * 1024 * 1024)


def announce(srv) -> None:
    click.echo(f"fastmta HTTP API on {srv.url}/api/v1 (OpenAPI: {srv.url}/api/v1/openapi.json)",
               err=True)
    click.echo(f"dashboard: {srv.dashboard_url}", err=True)


def http_options(f):
    f = click.option("--token", default=None, envvar="FASTMTA_HTTP_TOKEN",
                     help="bearer token (default: FASTMTA_HTTP_TOKEN, or a new one, printed)")(f)
    f = click.option("--max-upload-mb", type=int, default=512, show_default=True,
                     help="largest recipients upload")(f)
    return f


@main.command()
@click.option("--listen", default=DEFAULT_LISTEN, show_default=True, help="HOST:PORT")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--spool", "spool_dir", default=None, help="spool directory")
@http_options
@click.option("-v", "--verbose", count=True)
def serve(listen, config_path, spool_dir, token, max_upload_mb, verbose) -> None:
    """Serve the HTTP API (/api/v1) and the live dashboard for a spool.  Bound to
    loopback, reads are open and writes need the token; elsewhere everything needs it.
    Deliveries created here are sent by an engine on the same spool (`fastmta run
    --forever`, or `fastmta run --http` which is both)."""
    _setup_logging(verbose)
    cfg, spool_path = _config(config_path, spool_dir, None)
    try:
        srv = make_server(cfg, spool_path, listen, token, max_upload_mb)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    announce(srv)
    try:
        srv.run()
    except KeyboardInterrupt:
        pass
