"""Shared fixtures.

``impl``: parametrized over every importable core implementation (compiled and pure), so
each core test runs on both and parity is checked case by case.
"""

from __future__ import annotations

import os

import pytest

from fastmta import core


def _impl_params():
    impls = core.implementations()
    if os.environ.get("FASTMTA_NO_EXTENSIONS") == "1":
        impls = {"pure": impls["pure"]}
    elif os.environ.get("FASTMTA_REQUIRE_EXTENSIONS") == "1" and "compiled" not in impls:
        raise RuntimeError("FASTMTA_REQUIRE_EXTENSIONS=1 but the compiled core is missing")
    return [pytest.param(mod, id=name) for name, mod in impls.items()]


@pytest.fixture(params=_impl_params())
def impl(request):
    """One core implementation module (``fastmta._core`` or ``fastmta._core_py``)."""
    return request.param



# --------------------------------------------------------------- network safety guard
# Tests may talk to loopback only (127.0.0.0/8, ::1) and never to the machine's
# resolver.  This guard makes a stray connect/sendto to any other address fail loudly in
# the test process (Python-level sockets, i.e. asyncio's default loop and the stdlib);
# subprocesses are covered by their configs pointing at the simulated internet.
import ipaddress  # noqa: E402
import socket  # noqa: E402

# the compliance pre-flight of a config without [dns] nameservers must not ask the
# machine's resolver in tests (nor in the CLI subprocesses they start, which inherit it)
os.environ["FASTMTA_NO_SYSTEM_RESOLVER"] = "1"


def _check_address(address) -> None:
    if isinstance(address, tuple) and address:
        host = address[0]
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0] if isinstance(host, str) else host)
        except ValueError:
            if host == "localhost":
                return
            raise OSError(f"test network guard: connect to a name ({host!r}) refused") from None
        if not (ip.is_loopback or ip.is_unspecified):
            raise OSError(f"test network guard: traffic to {host} refused (loopback only)")


_orig_connect = socket.socket.connect
_orig_connect_ex = socket.socket.connect_ex
_orig_sendto = socket.socket.sendto


def _guarded_connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _check_address(address)
    return _orig_connect(self, address)


def _guarded_connect_ex(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _check_address(address)
    return _orig_connect_ex(self, address)


def _guarded_sendto(self, data, *args):
    if args and self.family in (socket.AF_INET, socket.AF_INET6):
        _check_address(args[-1])
    return _orig_sendto(self, data, *args)


socket.socket.connect = _guarded_connect
socket.socket.connect_ex = _guarded_connect_ex
socket.socket.sendto = _guarded_sendto
