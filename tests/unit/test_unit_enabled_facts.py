"""Whether a unit starts at boot, from the fact script: systemd's `show`
caches UnitFileState until a daemon-reload, and deploy switches the enabled
blue/green instance with `enable/disable --no-reload`, so the .wants links
decide (a stale "disabled" made bootstrap enable the first port's instance
again after a rotate-env: the fault suite's second reruns found it)."""
from __future__ import annotations

import pytest

from tasks.facts.script import MARK, FactsRequest, facts_cmd, parse_facts


def output(state: str, linked: bool | None) -> str:
    lines = [f"{MARK} units", "Id=app@3562.service", "LoadState=loaded", f"UnitFileState={state}",
             "ActiveState=active", ""]
    if linked is not None:
        lines += [f"{MARK} unit_links"] + (["app@3562.service"] if linked else [])
    return "\n".join(lines + [f"{MARK} end", ""])


@pytest.mark.parametrize("state, linked, enabled", [
    ("disabled", True, True),    # enabled --no-reload after systemd cached the state
    ("enabled", False, False),   # disabled --no-reload
    ("enabled", True, True),
    ("disabled", False, False),
    ("static", False, True),     # no [Install]: the link never decides
    ("enabled-runtime", False, True),
    ("enabled", None, True),     # an output without the section: systemd's word
    ("", True, False),           # no unit file (a dangling link): not enabled
])
def test_the_links_decide_over_a_cached_state(state, linked, enabled):
    assert parse_facts(output(state, linked)).unit_enabled("app@3562.service") is enabled


def test_the_script_lists_the_links_of_the_units_asked_without_a_fork():
    text = facts_cmd(FactsRequest(units=["app@3561.service", "nginx.service"])).render()
    loop = next(ln for ln in text.splitlines() if "/etc/systemd/system/*.wants/" in ln)
    assert "app@3561.service nginx.service" in loop and "*.requires/" in loop
    assert "$(" not in loop and "|" not in loop
