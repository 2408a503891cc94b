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


def test_more_than_one_source_ip_is_refused_not_ignored(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[smtp]\nsource_ips = ["127.0.0.2", "127.0.0.3"]\n')
    with pytest.raises(ConfigError, match="IP pools are not implemented"):
        load_config(path)
    path.write_text('[smtp]\nsource_ips = ["127.0.0.2"]\n')
    assert load_config(path).smtp.source_ips == ["127.0.0.2"]
