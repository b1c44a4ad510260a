"""The "running" run record (issue 18's checkpoint) is rewritten at most once per
CHECKPOINT_EVERY, not at every step of every host (issue 17: that was O(hosts^2),
a fifth of a 100-host bootstrap's CPU), and never lags the run by more."""
import json
import os
import time

import tasks.core.runner as runner
from tasks.config.inventory import load_inventory
from tasks.core.runner import Run


def test_a_burst_of_steps_is_one_write_then_one_more(tmp_path, monkeypatch):
    monkeypatch.setenv("FABSHIP_RUNS_DIR", str(tmp_path / "runs"))
    inv_path = tmp_path / "inv.yaml"
    inv_path.write_text("hosts:\n  static: [" + ", ".join(f"10.0.{i // 250}.{i % 250 + 1}" for i in range(200)) + "]\n")
    inv = load_inventory(str(inv_path))
    writes = []
    real = os.replace

    def counting(a, b):
        writes.append(b)
        return real(a, b)

    monkeypatch.setattr(runner.os, "replace", counting)
    run = Run("test", inv, inv.resolve_hosts())
    for step in range(5):
        for h in run.hosts:
            run.ctx(h).ok(f"step{step}", "")  # 1000 steps recorded (connects to nothing)
    assert len(writes) == 1  # the first step's, at once
    path = writes[0]
    time.sleep(runner.CHECKPOINT_EVERY + 0.5)
    assert len(writes) == 2  # the timer's: the whole burst, one write
    rec = json.loads(open(path).read())
    assert rec["result"] == "running"
    assert sum(len(h["steps"]) for h in rec["hosts"].values()) == 1000
    run.ctx(run.hosts[0]).ok("last", "")  # a checkpoint pending at finish is dropped
    run.finish()
    time.sleep(runner.CHECKPOINT_EVERY + 0.3)
    final = json.loads(open(path).read())
    assert final.get("result") != "running"
    assert [s["name"] for s in final["hosts"][run.hosts[0].name]["steps"]][-1] == "last"
