"""The host rebooted mid-run (issue 18): `systemctl reboot` inside h7 while
fab is at a point of a deploy, rollback, rotate-env or bootstrap, the host back 5 s later
(inject.Reboot). What boots is what systemd has enabled: the invariants then
say whether that is a finished release nginx points at (checked once nginx
answers, or after 30 s: an app listens some seconds after the boot is done).

What differs from a VM's reboot (the sandbox host is a systemd-nspawn
container, tasks/sandbox/fleet.py power_cycle/boot_again): the orderly
shutdown, the end of every process and session, the fresh /run and the boot
with the enabled units are real; the kernel, the network namespace and the
page cache survive (nothing written is lost), and the boot takes about a
second instead of a VM's half minute."""
from __future__ import annotations

import pytest

from faultapp import APP, HOST, SLEEP_MARK
from inject import Reboot, ensure_up


def _point(task, point, ci=False):
    return pytest.param(task, point, id=f"{task}-{point[0]}-{point[1].replace(' ', '_')}",
                        marks=[pytest.mark.faults_ci] if ci else [])


POINTS = [
    _point("deploy", ("inside", "build")),
    _point("deploy", ("after", "start new instance")),
    _point("deploy", ("after", "switch traffic"), ci=True),   # nginx on the new port, not yet recorded
    _point("deploy", ("after", "stop old instance")),
    _point("rollback", ("after", "switch traffic")),
    _point("rotate-env", ("after", "env file")),
    _point("rotate-env", ("after", "switch traffic")),
    _point("bootstrap", ("after", "env file")),   # lock held; the units and nginx steps not yet run
    _point("bootstrap", ("after", "systemd units")),
]


@pytest.mark.faults_full
@pytest.mark.parametrize("task,point", POINTS)
def test_reboot(fault_app, fault_results, task, point):
    # checked once nginx answers 200, or after 30 s: the app listens a few seconds after the boot
    rb = Reboot(HOST, down=5, fleet=fault_app.fleet,
                settle=f"curl -sf -m 2 -o /dev/null -H 'Host: {APP}.{HOST}.sandbox.test' http://127.0.0.1/health")
    try:
        chk = fault_app.case(fault_results, task, point, rb, fault="host reboot", inside_probe=f"'{SLEEP_MARK}'",
                             after_fault=rb.wait_back)
    finally:
        ensure_up(HOST)
    assert not chk.failed, "invariants broken:\n" + chk.report()
