"""`fabship init` and the `fabship` program: what an ops repository gets, that
it loads as written, that nothing is overwritten, bad input in one line, and
the program's version/--list/--root."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tasks.cli.init import parse_ec2, parse_static, scaffold
from tasks.cli.program import main
from tasks.config.inventory import load_inventory
from tasks.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def fabship(*args, cwd, env=None):
    """The console script's entry point, as `fabship ARGS` runs it (a real process)."""
    e = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    e.pop("FABSHIP_ROOT", None)
    e.update(env or {})
    return subprocess.run([sys.executable, "-c", "from tasks.cli.program import main; main()", *args],
                          cwd=cwd, env=e, capture_output=True, text=True, timeout=60)


EXPECTED = ["inventories/dev.yaml", "inventories/dev.local.yaml", "inventories/known_hosts/dev",
            "inventories/known_hosts/README.md", "env/dev.env.example", "env/dev.env", "fabfile.py",
            ".gitignore"]


def test_init_writes_an_ops_repository_that_loads(tmp_path):
    r = fabship("init", str(tmp_path / "shop-ops"), "--static", "web1=10.0.0.5", "web2=10.0.0.6", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    root = tmp_path / "shop-ops"
    for rel in EXPECTED:
        assert (root / rel).is_file(), rel
        assert f"created   {rel}" in r.stdout
    inv = load_inventory(str(root / "inventories" / "dev.yaml"))
    assert [(h.name, h.address) for h in inv.resolve_hosts(None)] == [("web1", "10.0.0.5"), ("web2", "10.0.0.6")]
    assert inv.get("app.name") == "shop"          # from the directory's name, less "-ops"
    assert inv.get("ssh.known_hosts") == "inventories/known_hosts/dev"
    for section in ("app", "env", "deploy", "health"):
        assert inv.get(section), section
    # secrets and machine-local files stay out of git, and are private on disk
    gi = (root / ".gitignore").read_text().splitlines()
    assert {".fabship/", "inventories/*.local.yaml", "env/*.env"} <= set(gi)
    assert stat.S_IMODE((root / "env" / "dev.env").stat().st_mode) == 0o600
    assert stat.S_IMODE((root / "inventories" / "dev.local.yaml").stat().st_mode) == 0o600
    assert (root / "fabfile.py").read_text().count("\n") == 2
    assert "from fabship.cli.namespace import ns" in (root / "fabfile.py").read_text()


def test_init_never_overwrites_and_says_what_exists(tmp_path):
    scaffold(tmp_path, name="dev", static=["10.0.0.5"])
    inv = tmp_path / "inventories" / "dev.yaml"
    inv.write_text(inv.read_text() + "# mine\n")
    (tmp_path / ".gitignore").write_text("node_modules/\n.fabship/\n")
    r = fabship("init", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert inv.read_text().endswith("# mine\n")
    assert "exists    inventories/dev.yaml (left as it is)" in r.stdout
    assert "appended  .gitignore" in r.stdout
    assert (tmp_path / ".gitignore").read_text().splitlines() == [
        "node_modules/", ".fabship/", "inventories/*.local.yaml", "env/*.env"]
    again = fabship("init", str(tmp_path), cwd=tmp_path)
    assert "nothing to do: every file exists" in again.stdout


def test_init_for_ec2_discovery(tmp_path):
    r = fabship("init", str(tmp_path), "--name", "prod", "--ec2", "eu-west-1", "Project=shop", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    data = yaml.safe_load((tmp_path / "inventories" / "prod.yaml").read_text())
    assert data["hosts"] == {"ec2": {"region": "eu-west-1", "filters": {"tag:Project": "shop"},
                                     "address": "private_ip", "name_tag": "Name"}}
    assert data["ssh"]["user"] == "ec2-user"
    load_inventory(str(tmp_path / "inventories" / "prod.yaml"))


@pytest.mark.parametrize("args, message", [
    (["--name", "../x"], "--name: '../x': an inventory name"),
    (["--static", "a b"], "--static: 'a b': expected [NAME=]ADDRESS"),
    (["--static", "w=1.2.3.4", "w=1.2.3.5"], "host name 'w' given twice"),
    (["--ec2", "europe", "Name=x"], "--ec2: region 'europe'"),
    (["--ec2", "eu-west-1", 'Name=a"b'], "--ec2: tag"),
    (["--user", "ro ot"], "--user: 'ro ot'"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, message):
    r = fabship("init", str(tmp_path / "ops"), *args, cwd=tmp_path)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "ops").exists() or not any((tmp_path / "ops").rglob("*"))


def test_static_and_ec2_parsers():
    assert [(h.name, h.address) for h in parse_static(["10.0.0.5", "db=10.0.0.6", "web.example.com"])] == [
        ("10.0.0.5", "10.0.0.5"), ("db", "10.0.0.6"), ("web.example.com", "web.example.com")]
    e = parse_ec2("us-east-1", "ota-dev")
    assert (e.key, e.value) == ("Name", "ota-dev")
    with pytest.raises(ConfigError):
        scaffold(".", static=["a"], ec2=("eu-west-1", "x"))


def test_version_names_fabship_then_its_libraries(tmp_path):
    r = fabship("--version", cwd=tmp_path)
    lines = r.stdout.splitlines()
    assert lines[0].startswith("fabship ") and lines[0].split()[1][0].isdigit()
    assert [x.split()[0] for x in lines[1:]] == ["Fabric", "Paramiko", "Invoke"]


def test_list_shows_the_same_tasks_as_fab(tmp_path):
    r = fabship("--list", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    names = {line.split()[0] for line in r.stdout.splitlines()[1:] if line.startswith("  ") and line.split()}
    assert {"bootstrap", "deploy", "rollback", "releases", "rotate-env", "verify", "diagnose", "unlock",
            "hosts", "provision", "init"} <= names
    assert not any(n.startswith("sandbox") for n in names)   # developer tooling is not the product's


def test_root_option_and_variable_choose_the_ops_repository(tmp_path):
    scaffold(tmp_path / "ops", name="dev", static=["10.0.0.5"])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = fabship("--root", str(tmp_path / "ops"), "hosts", "-i", "dev", cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    assert "10.0.0.5" in r.stdout
    r2 = fabship("hosts", "-i", "dev", cwd=elsewhere, env={"FABSHIP_ROOT": str(tmp_path / "ops")})
    assert r2.returncode == 0 and "10.0.0.5" in r2.stdout, r2.stderr
    r3 = fabship("hosts", "-i", "dev", cwd=elsewhere)            # never the installed package's
    assert r3.returncode != 0 and "inventory 'dev' not found" in r3.stderr
    bad = fabship("--root", str(tmp_path / "nope"), "hosts", "-i", "dev", cwd=elsewhere)
    assert bad.returncode == 2 and "not a directory" in bad.stderr


def test_completion_script_as_invoke_provides(tmp_path):
    r = fabship("--print-completion-script", "bash", cwd=tmp_path)
    assert r.returncode == 0 and "fabship" in r.stdout and "complete" in r.stdout


def test_main_is_the_console_script():
    text = (REPO / "pyproject.toml").read_text()
    assert 'fabship = "fabship.cli.program:main"' in text
    assert callable(main)
