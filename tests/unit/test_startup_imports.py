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
         "tasks.provision",
         # the runner (threads, run records), the SSH layer and the command layer: `fab hosts` prints
         # its table with tasks.core.table, and `fab exec`'s module (commands) is not the executor's
         "tasks.core.runner", "tasks.core.ssh", "tasks.core.commands", "tasks.cli.app_exec",
         "concurrent.futures.thread")

# every fabship module `fab --list` / `fab hosts` may load: a new one here costs every start
# (bench/startup.py); import it where it is used instead, or add it with the measured cost
AT_START = {"tasks", "tasks.cli", "tasks.cli.base", "tasks.cli.namespace", "tasks.cli.remainder", "tasks.core",
            "tasks.core.errors", "tasks.core.output", "tasks.sandbox", "tasks.sandbox.tasks"}
FOR_HOSTS = {"tasks.cli.hosts", "tasks.core.table", "tasks.core.paths", "tasks.config", "tasks.config.inventory",
             "tasks.config.hosts", "tasks.config.schema", "tasks.config.schema_types",
             "tasks.config.provision_schema", "tasks.config.discovery"}
# what fabship may load beyond what `import fabric.main` itself loads (paramiko, invoke, yaml...):
# the fabfile and three built-in modules
NOT_FABRICS = {"fabfile", "faulthandler", "gc", "pwd"}


def loaded(argv, tmp_path) -> set[str]:
    """Modules `fab ARGV` has imported by the time it exits (run in-process in a child);
    with argv None, those of `import fabric.main` alone."""
    run = ("try:\n"
           f"    fabric.main.program.run(['fab', *{argv!r}], exit=False)\n"
           "except SystemExit:\n"
           "    pass\n") if argv is not None else ""
    code = ("import sys, fabric.main\n" + run +
            "sys.stdout.flush()\n"
            "sys.stderr.write('\\n'.join(sys.modules))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert "Traceback" not in r.stderr, r.stderr
    return set(r.stderr.split("\n"))


def heavy(mods: set[str]) -> list[str]:
    return sorted(m for m in mods if any(m == h or m.startswith(h + ".") for h in HEAVY))


def beyond_fabric(mods: set[str], tmp_path) -> tuple[list[str], set[str]]:
    """(what is neither fabship's nor loaded by fabric itself, fabship's modules)"""
    extra = mods - loaded(None, tmp_path)
    ours = {m for m in extra if m == "tasks" or m.startswith("tasks.")}
    return sorted(extra - ours - NOT_FABRICS), ours


def test_fab_list_loads_no_task_module(tmp_path):
    mods = loaded(["--list"], tmp_path)
    assert "tasks.cli.namespace" in mods
    assert heavy(mods) == []
    assert not [m for m in mods if m.startswith("tasks.config")], "the inventory is not read for --list"
    other, ours = beyond_fabric(mods, tmp_path)
    assert other == [], "fabship made `fab --list` load these"
    assert sorted(ours - AT_START) == [], "new fabship modules at every start"


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
    other, ours = beyond_fabric(mods, tmp_path)
    assert other == [], "fabship made `fab hosts` load these"
    assert sorted(ours - AT_START - FOR_HOSTS) == [], "new fabship modules for `fab hosts`"


def test_fab_hosts_with_a_jump_host_still_names_it(tmp_path):
    """The SSH layer is loaded only when there is a hop to describe (and then it is)."""
    inv = tmp_path / "inv.yaml"
    inv.write_text("hosts:\n  static: [10.0.0.1]\nssh: {jump_host: 'ops@bastion.example.com:2200'}\n")
    r = subprocess.run([sys.executable, "-m", "fabric", "hosts", "-i", str(inv)], cwd=REPO, capture_output=True,
                       text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert "reached through jump host ops@bastion.example.com:2200" in r.stdout


def test_what_start_up_loaded_is_frozen_out_of_the_gc(tmp_path):
    """tasks/cli/namespace.py freezes the objects loaded by then (gc.freeze): no full collection
    walks fabric's and fabship's import-time objects again, not even the ones at exit."""
    code = "import gc, fabric.main, tasks.cli.namespace; print(gc.get_freeze_count())"
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) > 10000
