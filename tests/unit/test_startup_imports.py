"""`fab --list` and `fab hosts` on a static inventory load only what they use
(issue 17: start-up within 1.1x of `import fabric`; bench/startup.py measures it).
What invoke/fabric import themselves (yaml, unittest.mock) is not fabship's."""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# never at start-up: templates, AWS, the verification suite, the sandbox's fleet, and
# every layer above config (a task imports its module when it runs)
HEAVY = ("jinja2", "boto3", "botocore", "testinfra", "pytest", "tasks.sandbox.fleet", "tasks.sandbox.images",
         "tasks.sandbox.services", "tasks.facts", "tasks.resources", "tasks.verify", "tasks.release",
         "tasks.provision")


def loaded(argv, tmp_path) -> set[str]:
    """Modules `fab ARGV` has imported by the time it exits (run in-process in a child)."""
    code = ("import sys, fabric.main\n"
            "try:\n"
            f"    fabric.main.program.run(['fab', *{argv!r}], exit=False)\n"
            "except SystemExit:\n"
            "    pass\n"
            "sys.stdout.flush()\n"
            "sys.stderr.write('\\n'.join(sys.modules))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert "Traceback" not in r.stderr, r.stderr
    return set(r.stderr.split("\n"))


def heavy(mods: set[str]) -> list[str]:
    return sorted(m for m in mods if any(m == h or m.startswith(h + ".") for h in HEAVY))


def test_fab_list_loads_no_task_module(tmp_path):
    mods = loaded(["--list"], tmp_path)
    assert "tasks.cli.namespace" in mods
    assert heavy(mods) == []
    assert not [m for m in mods if m.startswith("tasks.config")], "the inventory is not read for --list"


@pytest.mark.parametrize("hosts", ["static list", "static map"])
def test_fab_hosts_on_a_static_inventory(tmp_path, hosts):
    inv = tmp_path / "inv.yaml"
    body = ("  static: [10.0.0.1, 10.0.0.2]\n" if hosts == "static list" else
            "  static:\n    web1: {address: 10.0.0.1, port: 2222}\n")
    inv.write_text(f"hosts:\n{body}app: {{name: shop, kind: node, port: 3000}}\n"
                   "nginx: {server_name: '{host}.example.com'}\n")
    mods = loaded(["hosts", "-i", str(inv)], tmp_path)
    assert "tasks.config.inventory" in mods
    assert heavy(mods) == []
