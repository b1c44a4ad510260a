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


# Inside long steps other than the build: the health-check wait (a new
# instance that sleeps 6.5 s before it listens, inside the 10 s health window)
# and the upload of a 24 MiB git bundle with the link held to 16 Mbit/s (~12 s)
LONG_STEPS = [
    pytest.param("deploy", signal.SIGKILL, "health check", id="deploy-SIGKILL-inside-health_check",
                 marks=[pytest.mark.faults_ci]),
    pytest.param("deploy", signal.SIGTERM, "health check", id="deploy-SIGTERM-inside-health_check"),
    pytest.param("rollback", signal.SIGTERM, "health check", id="rollback-SIGTERM-inside-health_check"),
    pytest.param("rollback", signal.SIGKILL, "health check", id="rollback-SIGKILL-inside-health_check"),
    pytest.param("rotate-env", signal.SIGKILL, "health check", id="rotate-env-SIGKILL-inside-health_check"),
    pytest.param("rotate-env", signal.SIGTERM, "health check", id="rotate-env-SIGTERM-inside-health_check",
                 marks=[pytest.mark.faults_ci]),
    pytest.param("deploy", signal.SIGKILL, "git bundle", id="deploy-SIGKILL-inside-upload",
                 marks=[pytest.mark.faults_ci]),
    pytest.param("deploy", signal.SIGTERM, "git bundle", id="deploy-SIGTERM-inside-upload"),
]


@pytest.mark.faults_full
@pytest.mark.parametrize("task,sig,step", LONG_STEPS)
def test_signal_inside_long_step(fault_app, fault_results, task, sig, step):
    from faultapp import HOST, START_MARK, UPLOAD_MARK, Plan
    from inject import shape_link

    kw = {}
    if step == "health check":
        kw["inside_probe"] = f"'{START_MARK}'"
    else:
        def big_plan():   # a ref the host lacks: the deploy uploads its bundle
            old, ref = fault_app.baseline()["served"].strip(), fault_app.big_ref()
            return Plan(["--ref", ref], old, ref, [fault_app.env_now()])
        def no_partial_upload(chk):
            left = fault_app.c.sh("ls /tmp | grep '^fabship-upload' || true")[1].split()
            if left:
                chk.failed["no upload left in /tmp"] = f"after the rerun: {left}"
            else:
                chk.passed.add("no upload left in /tmp")

        kw.update(plan=big_plan, before=lambda: shape_link(HOST, "16mbit"), after_fault=lambda: shape_link(HOST, None),
                  after_rerun=no_partial_upload,
                  probe_cmd=f"pgrep -f {UPLOAD_MARK} >/dev/null && "
                            "find /tmp -maxdepth 1 -name 'fabship-upload.*' -size +256k | grep -q .")
    try:
        _fail_on(fault_app.case(fault_results, task, ("inside", step), kill(sig), **kw))
    finally:
        shape_link(HOST, None)
