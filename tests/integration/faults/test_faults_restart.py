"""The faults again with deploy.strategy restart (issue 18): app `faultrst`
on h7, one APP.service on one port behind nginx. A deploy there stops the
old process and starts the new one in one remote command ("switch and
restart": `current` moves, then systemctl restart), then health-checks it
and, on failure, switches back to the previous release. The invariants are
the blue/green ones read through `current` and APP.service (invariants.py
host_facts); "serves old or new" allows the restart's own gap only before
the check, never after the rerun.

SIGKILL and SIGTERM at every step of a clean deploy, rollback and
rotate-env, inside the build and the health-check wait; the link cut and
the host rebooted at the restart."""
from __future__ import annotations

import signal
import threading

import pytest

from faultapp import HOST, SLEEP_MARK, START_MARK
from inject import Reboot, ensure_up, kill, set_link
from test_faults_link import LONG, back_up, cut


def _fail_on(chk):
    assert not chk.failed, "invariants broken:\n" + chk.report()


def _probe(point):
    return f"'{START_MARK}'" if point == ("inside", "health check") else f"'{SLEEP_MARK}'"


CI_POINTS = [
    # CI runs the one (the others in the full matrix): the restart strategy's own cleanup path
    pytest.param("deploy", signal.SIGKILL, ("after", "switch and restart"), id="deploy-SIGKILL-after-switch_and_restart",
                 marks=[pytest.mark.faults_ci]),
    pytest.param("deploy", signal.SIGTERM, ("inside", "health check"), id="deploy-SIGTERM-inside-health_check"),
    pytest.param("rollback", signal.SIGKILL, ("inside", "health check"), id="rollback-SIGKILL-inside-health_check"),
]


@pytest.mark.faults_full
@pytest.mark.parametrize("task,sig,point", CI_POINTS)
def test_restart_signal_at_point(restart_app, fault_results, task, sig, point):
    _fail_on(restart_app.case(fault_results, task, point, kill(sig), fault=f"{sig.name} (restart)",
                              inside_probe=_probe(point)))


@pytest.mark.faults_full
@pytest.mark.parametrize("task", ["deploy", "rollback", "rotate-env"])
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=lambda s: s.name)
def test_restart_signal_at_every_step(restart_app, fault_results, task, sig):
    """Every boundary of a clean run of the task with the restart strategy,
    inside the build (deploy) and inside the health-check wait."""
    steps = restart_app.clean_steps(task)
    points = [("after", s) for s in dict.fromkeys(steps)]
    if task == "deploy":
        points.insert(steps.index("build"), ("inside", "build"))
    if "health check" in steps or task == "rotate-env":
        points.append(("inside", "health check"))
    broken = []
    for point in points:
        chk = restart_app.case(fault_results, task, point, kill(sig), fault=f"{sig.name} (restart)",
                               inside_probe=_probe(point))
        if chk.failed:
            broken.append(chk.report())
    assert not broken, f"{len(broken)} of {len(points)} points broke invariants:\n" + "\n".join(broken)


@pytest.mark.faults_full
def test_restart_link_cut_in_the_health_check(restart_app, fault_results):
    """The link down for longer than the keepalive limit while the new process
    is being health-checked: the host is failed in bounded time, and what
    serves afterwards is the old or the new release, whole."""
    done = threading.Event()
    try:
        _fail_on(restart_app.case(fault_results, "deploy", ("inside", "health check"), cut(LONG, done),
                                  fault=f"link cut {LONG}s (restart)", inside_probe=f"'{START_MARK}'",
                                  after_fault=back_up(restart_app.fleet, done)))
    finally:
        set_link(HOST, True)


@pytest.mark.faults_full
def test_restart_host_rebooted_after_the_restart(restart_app, fault_results):
    app = restart_app.c.app
    rb = Reboot(HOST, down=5, fleet=restart_app.fleet,
                settle=f"curl -sf -m 2 -o /dev/null -H 'Host: {app}.{HOST}.sandbox.test' http://127.0.0.1/health")
    try:
        _fail_on(restart_app.case(fault_results, "deploy", ("after", "switch and restart"), rb,
                                  fault="host reboot (restart)", after_fault=rb.wait_back))
    finally:
        ensure_up(HOST)
