"""fabship as a team installs it (issue 13): the wheel built from this repository,
installed (no -e) into a fresh virtual environment outside it, then an ops
repository made by `fabship init` in an empty directory drives a real sandbox
host: hosts, bootstrap, deploy of the sample Node app, verify, and `fab` through
the generated two-line fabfile. A user `tasks.py` in that repository must not
matter (only `fabship` is installed)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
HOST = "h1"
APP = "opsdemo"
PORT = 3400


def sh(argv, *, cwd=None, env=None, timeout=600, check=True):
    e = {k: v for k, v in os.environ.items() if not k.startswith("FABSHIP_") and k != "PYTHONPATH"}
    e.update(env or {})
    r = subprocess.run([str(a) for a in argv], cwd=cwd, env=e, capture_output=True, text=True, timeout=timeout)
    if check:
        assert r.returncode == 0, f"{argv}: exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A fresh venv (no system site-packages) with only the built wheel installed."""
    tmp = tmp_path_factory.mktemp("wheel")
    sh([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp / "dist", REPO], timeout=600)
    wheels = list((tmp / "dist").glob("fabship-*.whl"))
    assert len(wheels) == 1, wheels
    names = zipfile.ZipFile(wheels[0]).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"fabship"}, tops   # no tasks/, no fabfile
    assert "fabship/templates/nginx/site.conf.j2" in names          # templates are package data
    assert "fabship/verify/suite/test_host.py" in names              # so is the testinfra suite
    assert not [n for n in names if n.startswith(("fabship/sandbox/", "fabship/templates/sandbox/"))]
    v = tmp / "venv"
    sh([sys.executable, "-m", "venv", v])
    sh([v / "bin" / "pip", "install", "-q", "--disable-pip-version-check", wheels[0]], timeout=900)
    return v


def test_installed_wheel_runs_an_ops_repository(sandbox_fleet, venv, tmp_path):
    fabship = venv / "bin" / "fabship"
    ver = sh([fabship, "--version"]).stdout.splitlines()
    assert ver[0].startswith("fabship ") and ver[1].startswith("Fabric ")

    sbx = yaml.safe_load((REPO / "inventories" / "sandbox.yaml").read_text())
    address = sbx["hosts"]["static"][HOST]["address"]
    ops = tmp_path / "shop-ops"
    r = sh([fabship, "init", ops, "--name", "sbx", "--app", APP, "--static", f"{HOST}={address}",
            "--key-file", sbx["ssh"]["key_file"]], cwd=tmp_path)
    assert "created   inventories/sbx.yaml" in r.stdout
    # the committed known_hosts policy: the host's real key, as a team would record it
    keys = [line for line in Path(sbx["ssh"]["known_hosts"]).read_text().splitlines()
            if line.split(" ", 1)[0] in (address, f"[{address}]:22")]
    assert keys
    with open(ops / "inventories" / "known_hosts" / "sbx", "a") as f:
        f.write("\n".join(keys) + "\n")
    # the team's own edits: its app beside the ops files, its port and name on a shared host
    shutil.copytree(REPO / "apps" / "node-app", ops / "app", ignore=shutil.ignore_patterns("node_modules", "dist"))
    inv_path = ops / "inventories" / "sbx.yaml"
    text = inv_path.read_text()
    text = text.replace("  port: 3000\n", f"  port: {PORT}\n")
    text = text.replace('  server_name: "{host}"', f'  server_name: "{APP}.{{host}}.test"')
    text = text.replace("  path: /health                       # polled", "  body_contains: '\"status\":\"ok\"'\n"
                        "  path: /health                       # polled")
    inv_path.write_text(text)
    (ops / "tasks.py").write_text("raise SystemExit('a user tasks.py was imported')\n")

    hosts = sh([fabship, "hosts", "-i", "sbx"], cwd=ops)
    assert re.search(rf"^{HOST} +{re.escape(address)} ", hosts.stdout, re.M), hosts.stdout
    sh([fabship, "bootstrap", "-i", "sbx"], cwd=ops, timeout=900)
    dep = sh([fabship, "deploy", "-i", "sbx"], cwd=ops, timeout=600)
    assert "[deployed]" in dep.stdout + dep.stderr
    ver = sh([fabship, "verify", "-i", "sbx"], cwd=ops, timeout=300)
    # run records and state live in the ops repository, never in site-packages
    assert list((ops / ".fabship" / "runs").glob("*-deploy-*.json"))
    assert not list((venv / "lib").rglob(".fabship"))
    # the app answers on the host, through nginx, with the release just deployed
    rc, out, _ = sandbox_fleet.run(HOST, f"curl -fsS -H 'Host: {APP}.{HOST}.test' http://127.0.0.1/health")
    assert rc == 0 and '"status":"ok"' in out
    # `fab` in the ops repository, through the generated fabfile, is the same tool
    fab = sh([venv / "bin" / "fab", "hosts", "-i", "sbx"], cwd=ops)
    assert re.search(rf"^{HOST} +{re.escape(address)} ", fab.stdout, re.M), fab.stdout
    rel = sh([venv / "bin" / "fab", "releases", "-i", "sbx"], cwd=ops)
    assert "*" in rel.stdout


def test_installed_wheel_inits_an_ec2_ops_repository(sandbox_fleet, venv, tmp_path):
    """`fabship init --ec2 REGION TAG`: the inventory finds the sandbox's instances in moto
    (EC2 over HTTP) by that tag, from the ops repository, with the installed wheel."""
    fabship = venv / "bin" / "fabship"
    sbx = yaml.safe_load((REPO / "inventories" / "sandbox-ec2.yaml").read_text())
    ec2 = sbx["hosts"]["ec2"]
    ops = tmp_path / "ec2-ops"
    sh([fabship, "init", ops, "--name", "stage", "--app", APP, "--ec2", ec2["region"], "Project=fabship-sandbox",
        "--user", "root"], cwd=tmp_path)
    hosts = sh([fabship, "hosts", "-i", "stage"], cwd=ops, env={"AWS_ENDPOINT_URL_EC2": ec2["endpoint_url"]})
    names = re.findall(r"^(fabship-sandbox-h\d+) +(10\.231\.0\.\d+) ", hosts.stdout, re.M)
    assert len(names) == len(sandbox_fleet.hosts), hosts.stdout
    assert "ec2" in hosts.stdout
