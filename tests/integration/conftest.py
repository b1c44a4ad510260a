"""Integration tier: tests on real sandbox hosts (tasks/sandbox/fleet.py).

Every test in this directory is marked `integration` (deselect the tier with
`-m "not integration"`). The session fixture `sandbox_fleet` brings a
docker-capable fleet up once per session -- FABSHIP_SANDBOX_COUNT hosts,
default 8, one per test area -- and tears it down at the end. A fleet that is already up with the
same shape is reused; one started by hand (`fab sandbox.up`) is then left up,
and one started by another pytest session is torn down by the last session
using it.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tasks.sandbox import fleet as sandbox
from tasks.core.errors import FabshipError

HERE = Path(__file__).resolve().parent
MARKER = "integration: runs on real sandbox hosts (root, systemd-nspawn)"


def pytest_configure(config):
    # pyproject.toml registers it too; register here only if it does not.
    if not any(str(m).startswith("integration:") for m in config.getini("markers")):
        config.addinivalue_line("markers", MARKER)
    if not any(str(m).startswith("xdist_group") for m in config.getini("markers")):  # no xdist installed
        config.addinivalue_line("markers", "xdist_group(name): tests one pytest-xdist worker runs in order")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the group marks
def pytest_collection_modifyitems(config, items):
    # This hook sees the whole session's items: mark only the ones from here.
    # One xdist group: the tier shares one fleet, so under `-n N --dist loadgroup`
    # one worker runs all of it in order while the others take the unit tier.
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.integration)
            item.add_marker(pytest.mark.xdist_group("sandbox"))


def _say(config):
    """Progress lines on the terminal, through pytest's output capture."""
    # an xdist worker's terminal goes nowhere; its stderr, uncaptured, reaches the console
    tr = None if hasattr(config, "workerinput") else config.pluginmanager.get_plugin("terminalreporter")
    capman = config.pluginmanager.get_plugin("capturemanager")

    def write(line: str) -> None:
        if tr is not None:
            tr.write_line(line)
        else:
            print(line, file=sys.stderr, flush=True)

    def out(msg: str) -> None:
        if capman is not None:
            with capman.global_and_fixture_disabled():
                write(f"sandbox: {msg}")
        else:
            write(f"sandbox: {msg}")

    return out


@pytest.fixture(scope="session")
def sandbox_fleet(pytestconfig) -> sandbox.SandboxFleet:
    """The running fleet: .hosts (name, address), .connect(name) -> strict paramiko
    client, .run(name, cmd) -> (rc, out, err), .inventory, .services (endpoints)."""
    if os.geteuid() != 0:
        pytest.skip("the integration tier needs root (systemd-nspawn, network namespaces)")
    out = _say(pytestconfig)
    try:
        count = sandbox.validate_count(os.environ.get("FABSHIP_SANDBOX_COUNT", "8"))
        fleet, created = sandbox.fixture_up(count, docker=True, out=out)
    except FabshipError as e:
        pytest.fail(f"sandbox.up: {e}", pytrace=False)
    if not created:
        out(f"reusing the running fleet ({len(fleet.hosts)} hosts)")
    try:
        yield fleet
    finally:
        try:
            if not sandbox.fixture_down(out=out):
                out("fleet left up (started by hand, or still used by another session)")
        except FabshipError as e:
            pytest.fail(f"sandbox.down: {e}", pytrace=False)
