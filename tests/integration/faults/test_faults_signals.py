"""SIGKILL and SIGTERM of `fab` at every step boundary and inside the build,
across deploy (blue/green), rollback and rotate-env (issue 18). The
boundaries are the steps of a clean run's record; the full matrix is
`-m faults_full`, CI runs the points marked ci."""
from __future__ import annotations

import signal

import pytest

from inject import kill
from faultapp import SLEEP_MARK

# the representative subset: the points where a half-done state is most likely
CI_POINTS = [
    ("deploy", signal.SIGKILL, ("after", "switch traffic")),   # nginx on the new port, current not yet moved
    ("deploy", signal.SIGTERM, ("inside", "build")),
    ("rollback", signal.SIGKILL, ("after", "stop old instance")),  # switched, not recorded
    ("rotate-env", signal.SIGKILL, ("after", "start new instance")),
    ("rotate-env", signal.SIGTERM, ("after", "env file")),          # installed, not applied
    ("deploy", signal.SIGKILL, ("after", "record release")),        # done, lock still held
]


def _fail_on(chk):
    assert not chk.failed, "invariants broken:\n" + chk.report()


@pytest.mark.faults_full
@pytest.mark.faults_ci
@pytest.mark.parametrize("task,sig,point", CI_POINTS, ids=lambda v: getattr(v, "name", None) or
                         (" ".join(v) if isinstance(v, tuple) else str(v)))
def test_signal_at_point(fault_app, fault_results, task, sig, point):
    _fail_on(fault_app.case(fault_results, task, point, kill(sig), inside_probe=f"'{SLEEP_MARK}'",
                            audit_action=task))


@pytest.mark.faults_full
@pytest.mark.parametrize("task", ["deploy", "rollback", "rotate-env"])
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=lambda s: s.name)
def test_signal_at_every_step(fault_app, fault_results, task, sig):
    """Every boundary of a clean run of the task, and inside the build."""
    steps = fault_app.clean_steps(task)
    points = [("after", s) for s in dict.fromkeys(steps)]
    if task == "deploy":
        points.insert(steps.index("build"), ("inside", "build"))
    broken = []
    for point in points:
        chk = fault_app.case(fault_results, task, point, kill(sig), inside_probe=f"'{SLEEP_MARK}'")
        if chk.failed:
            broken.append(chk.report())
    assert not broken, f"{len(broken)} of {len(points)} points broke invariants:\n" + "\n".join(broken)
