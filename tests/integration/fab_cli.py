"""Run `fab` the way an operator does (a subprocess in the repo root), for every
integration test. One place decides the environment and what a hang looks like.

A `fab` that outlives its timeout is asked for its thread stacks (SIGUSR1), then
stopped with SIGTERM (fab's clean stop), and the test fails with the tails of
both streams -- never a bare pytest-timeout with the output lost. The timeout
is kept under pytest-timeout's per-test budget for that reason.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# pyproject.toml's pytest-timeout (seconds per test, fixtures included), less a
# margin for the SIGTERM grace period and the rest of the test.
PYTEST_TIMEOUT = 900
LONGEST = PYTEST_TIMEOUT - 90
TERM_GRACE = 30
# A first bootstrap of fresh hosts takes 40-90 s here (cold package cache included).
BOOTSTRAP_FIRST_TRY = 330


def tail(text: str, lines: int = 40) -> str:
    return "\n".join((text or "").splitlines()[-lines:])


def start_fab(*args: str, runs_dir: Path | str | None = None, env: dict | None = None,
              **popen) -> subprocess.Popen:
    """`fab ARGS` started in the repo root (text pipes unless `popen` says otherwise);
    FABSHIP_INVENTORY from the caller's shell never leaks in."""
    e = dict(os.environ)
    e.pop("FABSHIP_INVENTORY", None)
    if runs_dir is not None:
        e["FABSHIP_RUNS_DIR"] = str(runs_dir)
    e.update(env or {})
    argv = [sys.executable, "-m", "fabric", *map(str, args)]
    return subprocess.Popen(argv, cwd=REPO, env=e, **{"stdout": subprocess.PIPE, "stderr": subprocess.PIPE,
                                                      "text": True, **popen})


class FabHung(AssertionError):
    """A fab run outlived its time limit; the message has its output and thread stacks."""


def run_fab(*args: str, runs_dir: Path | str | None = None, env: dict | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
    """`fab ARGS` to the end, or stopped (and the test failed with its output) after `timeout`.

    A bootstrap that hangs is run once more after the report: bootstrap is
    idempotent by design, and a one-off stall outside fabship (a mirror, the
    machine) must not sink the whole tier. The report still reaches the
    session's warnings summary, so a hang is never silent."""
    limit = min(timeout, LONGEST)
    if args and args[0] == "bootstrap" and "--dry-run" not in args and limit > 2 * BOOTSTRAP_FIRST_TRY:
        try:
            return _run_once(args, runs_dir, env, BOOTSTRAP_FIRST_TRY)
        except FabHung as e:
            warnings.warn(f"{e}\n(retrying once: bootstrap is idempotent)", stacklevel=2)
            return _run_once(args, runs_dir, env, limit - BOOTSTRAP_FIRST_TRY - TERM_GRACE)
    return _run_once(args, runs_dir, env, limit)


def _run_once(args, runs_dir, env, limit: float) -> subprocess.CompletedProcess:
    proc = start_fab(*args, runs_dir=runs_dir, env=env)
    argv = proc.args
    try:
        out, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)  # fab prints every thread's stack: where it hangs
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=TERM_GRACE)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        shown = " ".join(shlex.quote(a) for a in ["fab", *argv[3:]])
        raise FabHung(f"`{shown}` was still running after {limit:.0f}s and was stopped\n"
                      f"--- stdout (tail)\n{tail(out, 60)}\n"
                      f"--- stderr (tail, thread stacks)\n{tail(err, 250)}") from None
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


class OneHostFab:
    """`fab TASK -i INV --limit HOST` for tests that work on one sandbox host,
    with the run records in `tmp/runs` and the host's shell at hand."""

    def __init__(self, fleet, host: str, tmp: Path, inv: Path | None = None):
        self.fleet, self.host, self.tmp = fleet, host, tmp
        self.runs = tmp / "runs"
        self.inv = inv

    def fab(self, task, *args, expect=0, inv=None, timeout=900) -> subprocess.CompletedProcess:
        r = run_fab(task, "-i", inv or self.inv, "--limit", self.host, *args, runs_dir=self.runs, timeout=timeout)
        out = r.stdout + r.stderr
        assert "Traceback" not in out, out[-3000:]
        if expect is not None:
            assert r.returncode == expect, f"fab {task} {' '.join(args)} exited {r.returncode}:\n{out[-4000:]}"
        return r

    def record(self, task) -> dict:
        recs = sorted(self.runs.glob(f"*-{task}-*.json"), key=lambda p: p.stat().st_mtime)
        return json.loads(recs[-1].read_text())

    def verify(self, *args, expect=None):
        """fab verify, and its per-check results from the run record."""
        r = self.fab("verify", *args, expect=expect)
        return r, {c["name"]: c for c in self.record("verify")["extra"]["verify"][self.host]}

    def sh(self, cmd, timeout=300):
        return self.fleet.run(self.host, cmd, timeout=timeout)

    def must(self, cmd, timeout=300) -> str:
        code, out, err = self.sh(cmd, timeout)
        assert code == 0, f"on {self.host}: {cmd!r} -> {code}: {(err or out)[-2000:]}"
        return out
