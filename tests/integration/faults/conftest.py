"""The fault-injection suite (issue 18): faults injected on sandbox hosts at
every step of deploy / rollback / rotate-env, invariants checked after each
and after a plain rerun (README "Fault injection").

Every test here is marked `faults` (and `integration`, by the tier's
conftest). The full matrix is marked `faults_full` too and runs only when
asked for:

    python3 -m pytest -m faults_full tests/integration/faults    # everything
    FABSHIP_FAULTS=full python3 -m pytest tests/integration/faults

A plain `python3 -m pytest` (CI) runs the representative subset: the points
`ci=True` in the test modules, a few minutes on the sandbox.

Host h7, app `faultapp` (own name, ports 3561/3562, own nginx site), so the
suite is independent of the other tests on h7 and of test order.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

FULL_ENV = "FABSHIP_FAULTS"


def full_matrix(config) -> bool:
    return os.environ.get(FULL_ENV) == "full" or "faults_full" in (config.option.markexpr or "")


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).resolve().parent
    mine = [i for i in items if here in Path(str(i.fspath)).resolve().parents]
    for item in mine:
        item.add_marker(pytest.mark.faults)
    if full_matrix(config):
        return
    # CI: the representative subset only; the rest is `-m faults_full`
    dropped = [i for i in mine if i.get_closest_marker("faults_full") and not i.get_closest_marker("faults_ci")]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [i for i in items if i not in dropped]


@pytest.fixture(scope="session")
def fault_app(sandbox_fleet, tmp_path_factory):
    from faultapp import FaultApp

    return FaultApp.up(sandbox_fleet, tmp_path_factory.mktemp("faults"))


@pytest.fixture(scope="session")
def restart_app(sandbox_fleet, tmp_path_factory):
    """`faultrst` on the same host: deploy.strategy restart (one APP.service on
    one port: stop, switch `current`, start, health-check, switch back)."""
    from faultapp import FaultApp

    return FaultApp.up(sandbox_fleet, tmp_path_factory.mktemp("faultrst"), app="faultrst", port=3570,
                       strategy="restart")


@pytest.fixture(scope="session", autouse=True)
def fault_results(request):
    """Every case's outcome, written for the README's table at the end
    (.fabship/faults/last-run.json; the figures of the last full run)."""
    from faultapp import Results

    # a -k selection of the matrix is not a full run: it goes to last-run.json
    res = Results(full=full_matrix(request.config) and not request.config.option.keyword)
    yield res
    res.write()
