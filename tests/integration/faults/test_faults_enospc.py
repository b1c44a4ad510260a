"""ENOSPC on the host (issue 18): a small tmpfs over the app root (upload,
build, release record) or /etc/APP (env install), filled to the last byte at
the point; the operator then frees the space and reruns. While the disk the
release log lives on is full no line can be written there: for those points
the log invariant is checked on the run record instead (it names the
failure)."""
from __future__ import annotations

import pytest

import invariants as inv
from faultapp import APP, HOST
from inject import SmallFs, fill_disk

ROOT, ETC = f"/opt/{APP}", f"/etc/{APP}"

POINTS = [
    pytest.param("deploy", ROOT, ("after", "release dir"), id="upload", marks=[pytest.mark.faults_full]),
    pytest.param("deploy", ROOT, ("after", "checkout"), id="build",
                 marks=[pytest.mark.faults_full, pytest.mark.faults_ci]),
    pytest.param("deploy", ROOT, ("after", "stop old instance"), id="release-record",
                 marks=[pytest.mark.faults_full]),
    pytest.param("rotate-env", ETC, ("before", ""), id="env-install",
                 marks=[pytest.mark.faults_full, pytest.mark.faults_ci]),
]


@pytest.mark.parametrize("task,where,point", POINTS)
def test_enospc(fault_app, fault_results, task, where, point):
    fleet = fault_app.fleet
    fault_app.baseline()
    fs = SmallFs(fleet, HOST, where)
    try:
        fill = fill_disk(fleet, HOST, where)
        kw = dict(fault=f"ENOSPC {where}", after_fault=fs.free)
        if point[0] == "before":
            kw["before"] = lambda: fill(_NoFab())
            point = ("after", "env file")   # a boundary it reaches whatever happens: the failed install
            action = _noop
        else:
            action = fill
        waive = (inv.LOGS,) if where == ROOT else ()
        chk = fault_app.case(fault_results, task, point, action, waive=waive, **kw)
    finally:
        fs.close()
    assert not chk.failed, "invariants broken:\n" + chk.report()


class _NoFab:
    def thaw(self):
        pass


def _noop(fab):
    fab.thaw()
