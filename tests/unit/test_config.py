from __future__ import annotations

import pytest

from fastmta.config import load_config
from fastmta.errors import ConfigError


def test_defaults_and_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[dns]\nnameservers = ["127.0.0.1"]\nport = 5353\n')
    cfg = load_config(path, smtp={"port": 2525})
    assert cfg.dns.nameservers == ["127.0.0.1"] and cfg.dns.port == 5353
    assert cfg.smtp.port == 2525 and cfg.smtp.tls == "opportunistic"


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[smtp]\nprot = 25\n")
    with pytest.raises(ConfigError, match="prot"):
        load_config(path)


def test_dkim_where_inject_is_refused_not_ignored(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[dkim]\nwhere = "inject"\n')
    with pytest.raises(ConfigError, match="not implemented"):
        load_config(path)
    path.write_text('[dkim]\nwhere = "send"\n')
    assert load_config(path).dkim.where == "send"


def test_several_source_ips_form_a_pool_and_duplicates_are_refused(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[smtp]\nsource_ips = ["127.0.0.2", "127.0.0.3"]\n')
    from fastmta.egress.model import build_model

    pool = build_model(load_config(path)).pools["default"]  # issue #17: an implicit pool
    assert pool.members == (("127.0.0.2", 1.0), ("127.0.0.3", 1.0))
    path.write_text('[smtp]\nsource_ips = ["127.0.0.2", "127.0.0.2"]\n')
    with pytest.raises(ConfigError, match="listed twice"):
        load_config(path)
    path.write_text('[smtp]\nsource_ips = ["127.0.0.2"]\n')
    assert load_config(path).smtp.source_ips == ["127.0.0.2"]
