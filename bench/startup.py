#!/usr/bin/env python3
"""Start-up cost: `fab --list` and `fab hosts` on a static inventory against
`python3 -c 'import fabric'` (and a one-task fabfile: what Fabric itself adds), in
the same run, interleaved (a load spike hits every command of a round); prints
medians of wall and CPU time (user+sys) and their ratios to `import fabric`.

Target (issue 17): both <= 1.1x `import fabric`: fabship's own imports nearly free.

fabship freezes what is loaded when its tasks module is imported out of the cyclic GC
(gc.freeze(), tasks/cli/namespace.py), which also spares the interpreter's exit-time
collections over fabric's own objects: the row `import fabric + gc.freeze()` shows how
much of the gain that part is (the same saving for the bare import).

On a shared, busy machine the times wander; `--instructions` also counts each
command's instructions once under valgrind (cachegrind, no cache simulation):
deterministic, so a change of a few ms shows.

Bytecode is compiled first (`compileall`, as `pip install` does for the wheel): a
checkout run with PYTHONDONTWRITEBYTECODE=1 (as this machine's shells are) would
otherwise compile fabship's sources at every start, ~35 ms that no installed copy pays.

    python3 bench/startup.py [--rounds 20] [--inventory sandbox] [--instructions]
"""
from __future__ import annotations

import argparse
import compileall
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
FAB = str(BIN / "fab") if (BIN / "fab").exists() else "fab"  # not a version manager's shell shim


def run(cmd, cwd) -> tuple[float, float]:
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)


def instructions(cmd, cwd) -> int:
    """Instructions the command executes (valgrind's cachegrind, no cache simulation);
    the script form of `fab` runs under the interpreter so valgrind follows it."""
    if cmd[0] == FAB:
        cmd = [sys.executable, FAB, *cmd[1:]]
    r = subprocess.run(["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
                        *cmd], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=True)
    m = re.search(r"I\s+refs:\s+([\d,]+)", r.stderr)
    return int(m.group(1).replace(",", ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--inventory", default="", help="a static inventory for `fab hosts` (default: a 3-host "
                                                     "one written to a temp dir)")
    ap.add_argument("--instructions", action="store_true", help="also count instructions (valgrind)")
    a = ap.parse_args()
    compileall.compile_dir(str(REPO / "tasks"), quiet=1)
    compileall.compile_file(str(REPO / "fabfile.py"), quiet=1)
    with tempfile.TemporaryDirectory() as t:
        empty = Path(t) / "empty"
        empty.mkdir()
        (empty / "fabfile.py").write_text("from fabric import task\n\n\n@task\ndef hello(c):\n    pass\n")
        inv = a.inventory
        if not inv:
            inv = str(Path(t) / "static.yaml")
            Path(inv).write_text("hosts:\n  static:\n    web1: 10.0.0.1\n    web2: 10.0.0.2\n    web3: 10.0.0.3\n"
                                 "app: {name: shop, kind: node, port: 3000}\n")
        cmds = {
            "python3 -c 'import fabric'": ([sys.executable, "-c", "import fabric"], REPO),
            "import fabric + gc.freeze()": ([sys.executable, "-c", "import fabric, gc; gc.freeze()"], REPO),
            "fab --list (one-task fabfile)": ([FAB, "--list"], empty),
            "fab --list": ([FAB, "--list"], REPO),
            "fab hosts": ([FAB, "hosts", "-i", inv], REPO),
        }
        for c, d in cmds.values():  # warm the page cache
            run(c, d)
        wall = {k: [] for k in cmds}
        cpu = {k: [] for k in cmds}
        load0 = os.getloadavg()[0]
        for _ in range(a.rounds):
            for k, (c, d) in cmds.items():
                w, u = run(c, d)
                wall[k].append(w)
                cpu[k].append(u)
        ins = {k: instructions(c, d) for k, (c, d) in cmds.items()} if a.instructions else {}
        first = next(iter(cmds))
    base_w = statistics.median(wall["python3 -c 'import fabric'"])
    base_c = statistics.median(cpu["python3 -c 'import fabric'"])
    print(f"{a.rounds} interleaved rounds, load {load0:.2f} -> {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores")
    for k in cmds:
        w, u = statistics.median(wall[k]), statistics.median(cpu[k])
        print(f"  {k:32s} wall {1000 * w:5.0f} ms  {w / base_w:4.2f}x   cpu {1000 * u:5.0f} ms  {u / base_c:4.2f}x"
              + (f"   {ins[k] / 1e6:6.1f}M instructions {ins[k] / ins[first]:4.2f}x" if ins else ""))


if __name__ == "__main__":
    main()
