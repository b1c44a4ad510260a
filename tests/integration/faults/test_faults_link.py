"""The SSH link cut (the host's veth down) for shorter and longer than the
keepalive timeout (ssh.keepalive 2 x dead_after 3: 8 s), inside the build and
at the switch (issue 18)."""
from __future__ import annotations

import threading
import time

import pytest

from faultapp import HOST, SLEEP_MARK
from inject import set_link

SHORT, LONG = 3, 20


def cut(seconds: float, done: threading.Event):
    def act(fab):
        set_link(HOST, False)

        def back():
            set_link(HOST, True)
            done.set()
        threading.Timer(seconds, back).start()
        fab.thaw()
    act.__name__ = f"link cut {seconds}s"
    return act


def back_up(fleet, done: threading.Event):
    def wait():
        assert done.wait(LONG + 30), "the link never came back"
        time.sleep(2)  # ARP settles
        deadline = time.monotonic() + 60
        while fleet.run(HOST, "true", timeout=10)[0] != 0:
            assert time.monotonic() < deadline, f"{HOST} unreachable after the link came back"
            time.sleep(1)
    return wait


def _point(seconds, point, ci=False):
    return pytest.param(seconds, point, id=f"{seconds}s-{point[0]}-{point[1].replace(' ', '_')}",
                        marks=[pytest.mark.faults_ci] if ci else [])


POINTS = [
    _point(SHORT, ("inside", "build")),
    _point(LONG, ("inside", "build"), ci=True),
    _point(SHORT, ("after", "start new instance")),
    _point(LONG, ("after", "start new instance")),
    _point(LONG, ("after", "switch traffic")),
]


@pytest.mark.faults_full
@pytest.mark.parametrize("seconds,point", POINTS)
def test_link_cut(fault_app, fault_results, seconds, point):
    done = threading.Event()
    try:
        chk = fault_app.case(fault_results, "deploy", point, cut(seconds, done), fault=f"link cut {seconds}s",
                             inside_probe=f"'{SLEEP_MARK}'", after_fault=back_up(fault_app.fleet, done))
    finally:
        set_link(HOST, True)
    assert not chk.failed, "invariants broken:\n" + chk.report()
