"""The pre-flight through the CLI: `fastmta analyze --json` carries the findings and
`fastmta send` refuses on errors unless --force (real sim DNS on loopback)."""

from __future__ import annotations

import json

from click.testing import CliRunner
from compliance_helpers import GOOD_HOST, KEY_DOMAINS, message

from fastmta.cli import main


def _config(tmp_path, sim, key_file, extra=""):
    keys = "".join(f'[[dkim.keys]]\ndomain = "{d}"\nselector = "s1"\nkey_file = "{key_file}"\n'
                   'algorithm = "ed25519-sha256"\n\n' for d in KEY_DOMAINS)
    conf = tmp_path / "c.toml"
    conf.write_text(f'[dns]\nnameservers = ["127.0.0.1"]\nport = {sim.sim.dns_port}\n'
                    f'timeout_s = 2.0\n\n[smtp]\nehlo_name = "{GOOD_HOST}"\n\n'
                    f'[compliance]\nsource_ips = ["127.0.0.1"]\n{extra}\n{keys}')
    return conf


def _files(tmp_path, domain, **kw):
    (tmp_path / "r.csv").write_text("email\na@rcpt.test\nb@rcpt.test\n")
    (tmp_path / "m.eml").write_bytes(message(domain, **kw))
    return str(tmp_path / "r.csv"), str(tmp_path / "m.eml")


def test_analyze_json_has_compliance(sim, key, tmp_path):
    conf = _config(tmp_path, sim, key[0])
    rcpt, msg = _files(tmp_path, "good.example")
    res = CliRunner().invoke(main, ["analyze", "--json", "--config", str(conf), "--spool",
                                    str(tmp_path / "sp"), "--recipients", rcpt, "--message", msg])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["compliance"] == []
    rcpt, msg = _files(tmp_path, "nodmarc.example", unsubscribe=False)
    res = CliRunner().invoke(main, ["analyze", "--json", "--config", str(conf), "--spool",
                                    str(tmp_path / "sp"), "--recipients", rcpt, "--message", msg])
    assert res.exit_code == 0, res.output
    got = json.loads(res.output)["compliance"]
    assert [(f["code"], f["level"]) for f in got] == [
        ("one_click_unsubscribe_missing", "error"), ("dmarc_missing", "error")]
    assert set(got[0]) == {"code", "level", "detail"}
    res = CliRunner().invoke(main, ["analyze", "--config", str(conf), "--spool",
                                    str(tmp_path / "sp"), "--recipients", rcpt, "--message", msg])
    assert "compliance:  2 error(s), 0 warning(s)" in res.output
    assert "    error   dmarc_missing: no DMARC record for nodmarc.example" in res.output


def test_send_refuses_on_errors_and_names_the_fix(sim, key, tmp_path):
    conf = _config(tmp_path, sim, key[0])
    rcpt, msg = _files(tmp_path, "nospf.example")
    res = CliRunner().invoke(main, ["send", "--yes", "--config", str(conf), "--spool",
                                    str(tmp_path / "sp"), "--recipients", rcpt, "--message", msg])
    assert res.exit_code == 1
    assert ("Error: pre-flight: 1 compliance error blocks this send (fix them, or use --force "
            "to send anyway):\n  error   spf_fail: SPF of nospf.example gives 'fail' for the "
            "source IP 127.0.0.1") in res.output
    # nothing was injected
    from fastmta.spool import Spool

    sp = Spool.open(str(tmp_path / "sp"))
    try:
        assert list(sp.deliveries()) == []
    finally:
        Spool.close_all()


def test_preflight_off_and_warn_do_not_block(sim, key, tmp_path):
    from fastmta.compliance.preflight import blocking, run_preflight
    from fastmta.config import load_config
    from fastmta.delivery.template import Template

    for mode, want in (("off", 0), ("warn", 1)):
        conf = _config(tmp_path, sim, key[0], f'preflight = "{mode}"\n')
        cfg = load_config(conf)
        found = run_preflight(cfg, Template(message("nospf.example")))
        assert len(found) == want
        assert blocking(found, cfg) == []
