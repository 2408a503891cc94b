"""World data: profiles load, bad profiles are refused clearly, expectations are stable."""

from __future__ import annotations

import pytest

from fastmta.errors import ConfigError
from fastmta.sim.world import (
    PROFILE_DIR,
    Behaviour,
    Provider,
    World,
    WorldSpec,
    load_world,
    rcpt_fate,
)


@pytest.mark.parametrize("path", sorted(PROFILE_DIR.glob("*.toml")), ids=lambda p: p.stem)
def test_bundled_profiles_load(path):
    w = load_world(path.stem)
    assert w.domains and all(a.startswith("127.") for a in w.addresses)
    assert len(set(w.addresses)) == len(w.addresses)


def test_unknown_profile_and_bad_keys(tmp_path):
    with pytest.raises(FileNotFoundError, match="bundled: .*default"):
        load_world("no-such-profile")
    bad = tmp_path / "bad.toml"
    bad.write_text('[[providers]]\nname = "x"\n[providers.behaviour]\nunknown_usr_rate = 1\n')
    with pytest.raises(ConfigError, match="bad.toml.*unknown_usr_rate"):
        load_world(str(bad))
    with pytest.raises(ValueError, match="two providers"):
        World(WorldSpec(providers=[Provider(name="a", domains=["d.test"]),
                                   Provider(name="b", domains=["d.test"])]))


def test_expected_and_deterministic_rates():
    w = World(WorldSpec(providers=[
        Provider(name="u", domains=["u.test"], behaviour=Behaviour(unknown_user_rate=0.25)),
        Provider(name="n", domains=["n.test"], dns="nullmx"),
        Provider(name="b", domains=["b.test"], behaviour=Behaviour(block=True)),
    ]))
    assert w.expected("Unknown-7@u.test") == ("failed", "user_unknown")
    assert w.expected("full@u.test") == ("soft", "mailbox_full")
    assert w.expected("greylist-1@u.test") == ("sent", "")
    assert w.expected("a@n.test") == ("failed", "invalid_domain")
    assert w.expected("a@nowhere.test") == ("failed", "invalid_domain")
    assert w.expected("a@b.test") == ("soft", "refused")
    fates = [w.expected(f"user{i}@u.test")[0] for i in range(4000)]
    assert 0.2 < fates.count("failed") / 4000 < 0.3
    assert fates == [w.expected(f"user{i}@u.test")[0] for i in range(4000)]  # stable
    beh = w.providers["u"].behaviour
    assert all((rcpt_fate(beh, f"user{i}@u.test") == "unknown") == (f == "failed")
               for i, f in enumerate(fates))
