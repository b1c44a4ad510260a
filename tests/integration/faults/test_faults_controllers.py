"""Two control machines (two `fab` processes, different run ids) deploying,
rotating and bootstrapping the same app at once (issue 18): bootstrap's
writes (env file, units, nginx site) take the same lock as deploy and
rotate-env, just before its first change. Exactly one gets the host's lock,
the other stops before changing anything, naming the holder; the host ends
in one consistent state and the loser's rerun converges."""
from __future__ import annotations

import time

import pytest

import invariants as inv
from faultapp import HOST, Outcome, rotation_of
from faultapp import second as second_rerun
from inject import Fab


PAIRS = [
    pytest.param("deploy", "deploy", id="deploy+deploy", marks=[pytest.mark.faults_ci]),
    pytest.param("deploy", "rotate-env", id="deploy+rotate-env"),
    pytest.param("rotate-env", "rollback", id="rotate-env+rollback"),
    pytest.param("rotate-env", "rotate-env", id="rotate-env+rotate-env"),   # different files
    pytest.param("bootstrap", "bootstrap", id="bootstrap+bootstrap", marks=[pytest.mark.faults_ci]),
    pytest.param("bootstrap", "deploy", id="bootstrap+deploy"),
]


def other_env_plan(fault_app, p):
    """The second controller's rotate-env: a third file (ROTATION=three, or
    one when three is what the host has)."""
    from faultapp import Plan

    cur = rotation_of(p.envs[0])
    new = "one" if cur == "three" or p.envs[-1].endswith(b"ROTATION=three\n") else "three"
    return Plan(["--env-file", str(fault_app.env_file(new))], p.old, p.old,
                [p.envs[0], p.envs[0].replace(f"ROTATION={cur}".encode(), f"ROTATION={new}".encode())])


@pytest.mark.faults_full
@pytest.mark.parametrize("first,second", PAIRS)
def test_two_controllers(fault_app, fault_results, first, second):
    c = fault_app.c
    started = time.monotonic()
    plans = {first: fault_app.plan(first)}
    plans[second] = plans[first] if second == first else fault_app.plan(second)
    if second == first == "deploy":   # the second controller deploys the other ref
        plans = [plans[first], fault_app.plan(first)]
        plans[1].args = ["--ref", plans[0].old]
    elif second == first == "rotate-env":
        plans = [plans[first], other_env_plan(fault_app, plans[first])]
    else:
        plans = [plans[first], plans[second]]
    runs = [Fab(task, "-i", str(fault_app.inv), "--limit", HOST, "--no-gate", *p.args, runs_dir=fault_app.runs)
            for task, p in zip((first, second), plans)]
    results = [r.wait(timeout=300) for r in runs]
    chk = inv.Checker(f"{first} + {second}")
    codes = [rc for rc, _ in results]
    held = [i for i, (rc, out) in enumerate(results) if rc != 0 and "deploy lock held by" in out]
    if 0 not in codes or (codes.count(0) == 1 and len(held) != 1):
        chk.failed["one wins"] = f"exits {codes}: " + " || ".join(o.strip().splitlines()[-1][:200]
                                                                 for _, o in results)
    c.versions = {plans[0].old, plans[0].new, plans[1].old, plans[1].new}
    c.envs = [e for p in plans for e in p.envs]
    f = chk.state(c, "after both")
    chk.check(inv.LOCK, lambda: f.get("lock") != "held" or inv.fail("a lock is left"))
    for i in held:   # the loser: refused before any change, then its rerun converges
        task, p = (first, second)[i], plans[i]
        rc, out = c.fab(task, "--no-gate", *p.args)
        if rc != 0:
            chk.failed[inv.RERUN] = f"{task} rerun exit {rc}: {out.strip().splitlines()[-1][:300]}"
        else:
            chk.passed.add(inv.RERUN)
    if first == second == "rotate-env" and held:   # the loser's file is the one installed and running
        c.envs = plans[held[0]].envs[-1:]
    chk.state(c, "after the rerun")
    if first == second == "rotate-env":
        last = plans[held[0]] if held else plans[1]
        second_rerun(chk, c, "rotate-env", last.args)
    elif first == second == "bootstrap":   # the same bootstrap twice (CI and a laptop): no change left
        second_rerun(chk, c, "bootstrap", plans[0].args)
    else:
        second_rerun(chk, c, "deploy", [])
    fault_results.add(Outcome(f"{first}+{second}", "two controllers", "at once",
                                                     chk.failed, round(time.monotonic() - started, 1),
                              checked=sorted(chk.passed | set(chk.failed))))
    assert not chk.failed, "invariants broken:\n" + chk.report()
