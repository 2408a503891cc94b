"""The configured signers by From domain (:class:`SignerSet`, built from the ``[dkim]``
section) and :func:`key_check` for the delivery analysis."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from fastmta.dkim.keys import DkimError, DkimKeyError, DkimMessageError, read_key_file
from fastmta.dkim.signer import (
    DEFAULT_HEADERS,
    BodyHash,
    Signer,
    _ascii_domain,
    _from_domain,
    _Message,
)
from fastmta.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from fastmta.config import DkimConfig


class SignerSet:
    """The signers of a configuration, by From domain.

    ``signers_for(from_domain)``: exact domain first; otherwise the closest parent
    domain whose keys have ``subdomains = true``.  All keys of the chosen domain sign
    (e.g. RSA and Ed25519), in configuration order.
    """

    def __init__(self, entries: Iterable[tuple[Signer, bool]] = ()):
        self._by_domain: dict[str, list[Signer]] = {}
        self._subdomains: dict[str, list[Signer]] = {}
        self._keys: dict[tuple[str, str], Signer] = {}
        for signer, subdomains in entries:
            self.add(signer, subdomains=subdomains)

    def add(self, signer: Signer, *, subdomains: bool = False) -> None:
        key = (signer.domain, signer.selector)
        if key in self._keys:
            raise DkimError(f"two keys for selector {signer.selector} of {signer.domain}")
        self._keys[key] = signer
        self._by_domain.setdefault(signer.domain, []).append(signer)
        if subdomains:
            self._subdomains.setdefault(signer.domain, []).append(signer)

    @classmethod
    def from_config(cls, cfg: DkimConfig, base_dir: str | os.PathLike | None = None) -> SignerSet:
        """Load every key of a ``[dkim]`` section (keys read and parsed once).

        A relative ``key_file`` is taken relative to ``base_dir`` (the directory of
        the configuration file) when given, else to the working directory.
        """
        out = cls()
        if not cfg.enabled:
            return out
        for entry in cfg.keys:
            path = entry.key_file
            if base_dir is not None and not os.path.isabs(path):
                path = os.path.join(base_dir, path)
            pem = read_key_file(path, allow_insecure=cfg.allow_insecure_key_permissions)
            base = entry.headers if entry.headers is not None else cfg.headers or DEFAULT_HEADERS
            headers = [*base, *cfg.extra_headers]
            try:
                signer = Signer(
                    entry.domain,
                    entry.selector,
                    pem,
                    algorithm=entry.algorithm,
                    headers=headers,
                    canonicalization=entry.canonicalization or cfg.canonicalization,
                    oversign_from=cfg.oversign_from,
                    oversign=cfg.oversign_headers,
                    identity=entry.identity,
                    expiration_s=cfg.expiration_s or None,
                )
            except DkimKeyError as exc:
                raise DkimKeyError(f"{path}: {exc}") from None
            except DkimError as exc:
                raise ConfigError(f"[dkim] key {entry.selector}/{entry.domain}: {exc}") from None
            out.add(signer, subdomains=entry.subdomains)
        return out

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[Signer]:
        """Every signer, in configuration order."""
        return iter(self._keys.values())

    def get(self, domain: str, selector: str) -> Signer | None:
        """The signer cached for (domain, selector)."""
        return self._keys.get((_ascii_domain(domain), selector))

    def signers_for(self, from_domain: str) -> tuple[Signer, ...]:
        """The signers to use for mail from ``from_domain`` (empty: no key)."""
        d = _ascii_domain(from_domain)
        exact = self._by_domain.get(d)
        if exact:
            return tuple(exact)
        while "." in d:
            d = d.split(".", 1)[1]
            sub = self._subdomains.get(d)
            if sub:
                return tuple(sub)
        return ()

    def has_key_for(self, domain: str) -> bool:
        """Would mail from ``domain`` be signed?  (Delivery analysis warns if not.)"""
        return bool(self.signers_for(domain))

    def missing_key_warning(self, from_domain: str) -> str | None:
        """The delivery analysis' warning for a From domain without a key (else None)."""
        if self.has_key_for(from_domain):
            return None
        return (
            f"no DKIM key for the From domain {from_domain}: messages will be sent "
            "unsigned and fail DMARC at receivers that enforce it; add a [[dkim.keys]] "
            "entry for it (or for a parent domain with subdomains = true)"
        )

    def sign_message(
        self,
        message: bytes,
        from_domain: str | None = None,
        *,
        body_hash: BodyHash | None = None,
        timestamp: int | None = None,
    ) -> bytes:
        """The ``DKIM-Signature`` fields to prepend (b"" when no key applies).

        ``from_domain`` defaults to the domain of the message's From address.  The
        message is parsed once for all signers of the domain.
        """
        msg = None
        if from_domain is None:
            msg = _Message(message)  # parsed once for the From domain and the signers
            from_domain = _from_domain(msg.fields)
            if from_domain is None:
                raise DkimMessageError("cannot sign: no From address in the message")
        signers = self.signers_for(from_domain)
        if not signers:
            return b""
        if msg is None:
            msg = _Message(message)
        return b"".join(s._sign(msg, body_hash, timestamp) for s in signers)


#: Alias: the configured keys, as the engine sees them.
KeyStore = SignerSet


def key_check(cfg: DkimConfig):
    """``has_key_for(domain)`` of the configured keys, for the delivery analysis (which
    warns when the From domain has no key).  Loading the keys here also reports a bad
    or unsafe key file before anything is sent."""
    return SignerSet.from_config(cfg).has_key_for
