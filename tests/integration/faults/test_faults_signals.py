"""SIGKILL and SIGTERM of `fab` at every step boundary and inside the build,
across deploy (blue/green), rollback, rotate-env and bootstrap (issue 18). The
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
    ("bootstrap", signal.SIGKILL, ("after", "env file")),           # lock held, units, nginx, restart not yet
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
@pytest.mark.parametrize("task", ["deploy", "rollback", "rotate-env", "bootstrap"])
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=lambda s: s.name)
def test_signal_at_every_step(fault_app, fault_results, task, sig):
    """Every boundary of a clean run of the task, and inside the build (a
    bootstrap's: every step of one with work in each changing step)."""
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

        def no_health_dir_left(chk):   # the cut loop ends (<= 10 s) or dies of SIGPIPE: its dir goes with it
            rc = fault_app.c.sh("for i in $(seq 30); do ls -d /tmp/fabship-health.* >/dev/null 2>&1 || exit 0; "
                                "sleep 0.5; done; ls -d /tmp/fabship-health.*; exit 1")[0]
            if rc:
                chk.failed["no health dir left in /tmp"] = "after the rerun"
            else:
                chk.passed.add("no health dir left in /tmp")
        kw["after_rerun"] = no_health_dir_left
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


# Inside bootstrap's packages step: apt-get fetching and dpkg installing jq
# (the link held to 1 Mbit/s: ~3 s of download) when fab dies. The remote
# apt-get may die with its session mid-dpkg; the rerun must finish dpkg's
# work (no "dpkg was interrupted, run dpkg --configure -a" by hand).
@pytest.mark.faults_full
@pytest.mark.parametrize("sig", [pytest.param(signal.SIGKILL, id="SIGKILL"), pytest.param(signal.SIGTERM, id="SIGTERM")])
def test_signal_inside_bootstrap_packages(fault_app, fault_results, sig):
    from faultapp import BOOTSTRAP_PACKAGE, HOST
    from inject import shape_link

    def dpkg_sound(chk):
        c = fault_app.c
        # the killed run's apt-get may outlive it on the host (its session gone, nothing kills it)
        # and finish dpkg's triggers after the rerun saw the package installed: wait for it
        c.sh("for i in $(seq 120); do pgrep -x 'apt-get|dpkg' >/dev/null || exit 0; sleep 0.5; done; exit 1")
        audit = c.sh("dpkg --audit 2>&1")[1].strip()
        state = c.sh(f"dpkg-query -W -f='${{db:Status-Abbrev}}' {BOOTSTRAP_PACKAGE}")[1].strip()
        if audit or not state.startswith("ii"):
            chk.failed["dpkg consistent"] = f"after the rerun: {BOOTSTRAP_PACKAGE} {state!r}; {audit[:200]}"
        else:
            chk.passed.add("dpkg consistent")

    try:
        _fail_on(fault_app.case(fault_results, "bootstrap", ("inside", "packages"), kill(sig),
                                before=lambda: shape_link(HOST, "1mbit"), after_fault=lambda: shape_link(HOST, None),
                                probe_cmd="pgrep -f 'apt-get (install|update)' >/dev/null",
                                after_rerun=dpkg_sound))
    finally:
        shape_link(HOST, None)
