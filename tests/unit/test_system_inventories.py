"""The guides' systems as committed inventories (docs/systems.md): every one
loads and validates, the sample env files satisfy their contracts, dev and
prod differ where a team would, and `fab hosts` resolves each dev/prod
inventory against moto's EC2 (running instances with the guide's Name tag;
stopped ones and other environments' never)."""
import re
import shutil
import subprocess
from pathlib import Path

import boto3
import pytest
import yaml

from tasks.config.env_contract import check_contract, problems
from tasks.core.dotenv import parse_dotenv
from tasks.core.errors import ConfigError
from tasks.config.inventory import load_inventory, resolve_inventory_path

REPO = Path(__file__).resolve().parents[2]
INV = REPO / "inventories"
GENERATED = {"sandbox", "sandbox-ec2"}  # written by `fab sandbox.up`, never committed

# system -> (Name tag pattern, app name, kind)
SYSTEMS = {
    "ota": ("fitters-log-{env}-ota", "xavia-ota", "node"),
    "springsvc": ("ledgerly-{env}-api", "ledgerly-api", "docker"),
    "compose": ("shopfront-{env}-stack", "shopfront", "compose"),
    "model": ("visionml-{env}-model", "model-server", "python"),
}
SANDBOX_VARIANTS = ["sandbox-node", "sandbox-ota", "sandbox-springsvc", "sandbox-compose", "sandbox-model"]
REGION = "eu-west-1"


def committed() -> list[str]:
    out = subprocess.run(["git", "ls-files", "inventories/*.yaml"], cwd=REPO, capture_output=True, text=True)
    tracked = {Path(p).stem for p in out.stdout.split() if "/" not in p[len("inventories/"):]}
    # files not committed yet (a working tree mid-change) count too, generated ones never
    present = {p.stem for p in INV.glob("*.yaml") if not p.stem.endswith(".local")}
    return sorted((tracked | present) - GENERATED)


def existing(names):
    return [n for n in names if (INV / f"{n}.yaml").exists()]


def pairs():
    return [(s, env) for s in SYSTEMS for env in ("dev", "prod") if (INV / f"{s}-{env}.yaml").exists()]


FAKE_SANDBOX = {
    "hosts": {"static": {f"h{i}": {"address": f"10.231.0.{10 + i}",
                                   "tags": {"Name": f"fabship-sandbox-h{i}", "Project": "fabship-sandbox"}}
                         for i in range(1, 9)}},
    "ssh": {"user": "root", "key_file": "/nonexistent/sandbox_key", "known_hosts": "/nonexistent/known_hosts"},
    "sandbox": {"bridge_ip": "10.231.0.1", "docker": True, "domain_suffix": "sandbox.test",
                "acme_server": "https://10.231.0.1:14000/dir", "acme_ca_file": "/nonexistent/pebble.pem",
                "registry": "10.231.0.1:5000", "moto_endpoint": "http://10.231.0.1:5005"},
    "tls": {"acme_server": "https://10.231.0.1:14000/dir", "acme_ca_file": "/nonexistent/pebble.pem"},
    "docker": {"registry": "10.231.0.1:5000"},
}


@pytest.fixture
def inv_dir(tmp_path, monkeypatch):
    """A copy of inventories/ with a stand-in for the generated sandbox.yaml
    (the real one may not exist, and belongs to the running fleet)."""
    d = tmp_path / "inventories"
    shutil.copytree(INV, d, ignore=shutil.ignore_patterns("sandbox.yaml", "sandbox-ec2.yaml", "*.local.yaml",
                                                          "known_hosts"))
    ca = tmp_path / "pebble.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nstand-in\n-----END CERTIFICATE-----\n")
    fake = yaml.safe_load(yaml.safe_dump(FAKE_SANDBOX).replace("/nonexistent/pebble.pem", str(ca)))
    (d / "sandbox.yaml").write_text(yaml.safe_dump(fake))
    (tmp_path / "apps").symlink_to(REPO / "apps")
    monkeypatch.setenv("FABSHIP_ROOT", str(tmp_path))
    return d


@pytest.mark.parametrize("name", committed())
def test_every_committed_inventory_loads(inv_dir, name):
    inv = load_inventory(str(inv_dir / f"{name}.yaml"))
    assert inv.get("app.name") and inv.get("app.kind") and inv.get("deploy.source")
    assert check_contract(inv) is not None, "every system states its env contract"
    assert inv.get("health.path", "").startswith("/")


def test_the_expected_inventories_exist():
    names = committed()
    for s in SYSTEMS:
        if (INV / "common" / f"{s}.yaml").exists():
            assert {f"{s}-dev", f"{s}-prod", f"sandbox-{s}"} <= set(names), s
    assert "sandbox-node" in names


def test_shared_bases_are_not_listed_as_inventories(inv_dir):
    with pytest.raises(ConfigError) as e:
        resolve_inventory_path("no-such-inventory", base=inv_dir)
    listed = e.value.problem.split("known: ", 1)[1].split(", ")
    assert not [n for n in listed if "common" in n or n.endswith(".local")]
    assert set(existing(["ota-dev", "ota-prod", "sandbox-node"])) <= set(listed)
    # a base file alone is refused with the reason, not loaded half-way
    base = next((inv_dir / "common").glob("*.yaml"))
    with pytest.raises(ConfigError, match=r"hosts: required key is missing"):
        load_inventory(str(base))


@pytest.mark.parametrize("system, env", pairs())
def test_dev_prod_discover_by_the_guide_name_tag(inv_dir, system, env):
    inv = load_inventory(str(inv_dir / f"{system}-{env}.yaml"))
    ec2 = inv.get("hosts.ec2")
    assert ec2, "dev/prod inventories find their hosts by EC2 tag"
    pattern, app, kind = SYSTEMS[system]
    assert ec2["filters"] == {"tag:Name": pattern.format(env=env)}
    assert ec2["region"] == REGION and ec2.get("max_hosts")
    assert inv.get("environment") == env
    assert (inv.get("app.name"), inv.get("app.kind")) == (app, kind)
    assert inv.get("ssh.user") == "ec2-user"  # Amazon Linux 2023
    assert inv.get("ssh.known_hosts") == f"inventories/known_hosts/{system}-{env}"
    assert inv.get("env.source.type") in ("secretsmanager", "ssm")


@pytest.mark.parametrize("system", [s for s in SYSTEMS if (INV / f"{s}-prod.yaml").exists()])
def test_prod_differs_where_a_team_would(inv_dir, system):
    dev = load_inventory(str(inv_dir / f"{system}-dev.yaml"))
    prod = load_inventory(str(inv_dir / f"{system}-prod.yaml"))
    assert prod.get("hosts.ec2.address") == "private_ip"  # no public SSH in prod
    assert prod.get("env.contract.differ_from") == [f"{system}-dev"] and prod.get("env.contract.differ_keys")
    assert dev.get("env.source") != prod.get("env.source")
    assert prod.get("deploy.lock_wait") > 0
    if prod.get("tls.enabled"):
        assert prod.get("tls.domains") != dev.get("tls.domains")
    if prod.get("hooks.alb"):
        # one host out of the target group at a time, never all at once
        assert prod.get("deploy.batch") and prod.get("hooks.alb.min_in_service") >= 1


def test_ota_is_the_guide(inv_dir):
    inv = load_inventory(str(inv_dir / "ota-dev.yaml"))
    assert inv.get("hosts.ec2.filters") == {"tag:Name": "fitters-log-dev-ota"}
    assert inv.get("app.root") == "/opt/xavia-ota" and inv.get("env.path") == "/etc/xavia-ota/ota.env"
    assert inv.get("env.mode") == "0600" and inv.get("app.port") == 3000
    assert inv.get("app.start") == "npm run start" and inv.get("app.node_version") == "20"
    assert set(inv.get("packages")) == {"nginx", "git", "jq", "unzip"} and inv.get("swap.size") == "2G"
    assert inv.get("nginx.client_max_body_size") == "100M"
    assert inv.get("tls.enabled") and inv.get("tls.domains") == ["ota-dev.example.com"]
    assert inv.get("deploy.build") == ["npm ci", "npm run build"] and inv.get("deploy.ref") == "main"
    c = inv.get("env.contract")
    assert len(c["required"]) == 14 and set(c["optional"]) == {"S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY",
                                                                "S3_ENDPOINT"}
    rule = {k: v for k, v in c["rules"]["ADMIN_SESSION_SECRET"].items() if v is not None}
    assert rule == {"min_length": 64, "hex": True}
    checks = {ch["name"]: ch for ch in inv.get("verify.checks")}
    assert checks["releases_need_login"]["expect_status"] == 401
    assert checks["manifest"]["headers"]["expo-platform"] in ("ios", "android")


def _values(path: Path):
    return parse_dotenv(path.read_text(), str(path))


@pytest.mark.parametrize("name", existing(SANDBOX_VARIANTS))
def test_sandbox_variants_use_the_sandbox(inv_dir, name):
    inv = load_inventory(str(inv_dir / f"{name}.yaml"))
    hosts = inv.resolve_hosts("h8")
    assert [(h.name, h.address, h.user) for h in hosts] == [("h8", "10.231.0.18", "root")]
    assert inv.get("ssh.key_file") == "/nonexistent/sandbox_key"
    if inv.get("tls.enabled"):
        assert [hosts[0].expand(d) for d in inv.get("tls.domains")] == ["h8.sandbox.test"]
        assert inv.get("tls.acme_server") == FAKE_SANDBOX["tls"]["acme_server"]
        assert inv.get("tls.acme_ca_file").endswith("/pebble.pem")
    if inv.get("app.node_version"):
        assert inv.get("app.node_version") == "18"  # Debian 12's nodejs
    src = inv.get("env.source")
    assert src["type"] == "file"
    env_file = (inv_dir / src["file"]).resolve()
    assert env_file.is_file()
    assert problems(_values(env_file), inv.get("env.contract")) == []


def test_sandbox_env_files_hold_no_real_secrets():
    for f in (INV / "sandbox-env").glob("*.env"):
        text = f.read_text()
        assert text.startswith("#") and "NON-secret" in text.splitlines()[0] + text.splitlines()[1], f


def test_ota_contract_refuses_a_short_session_secret(inv_dir):
    inv = load_inventory(str(inv_dir / "sandbox-ota.yaml"))
    vals = _values(INV / "sandbox-env" / "ota.env")
    from tasks.core.commands import Secret

    vals["ADMIN_SESSION_SECRET"] = Secret("abc123")
    vals["S3_ENDPOINT"] = Secret("")  # may be empty (instance role)
    assert problems(vals, inv.get("env.contract")) == [
        "ADMIN_SESSION_SECRET is shorter than min_length 64"]
    del vals["UPLOAD_KEY"]
    assert "required key missing: UPLOAD_KEY" in problems(vals, inv.get("env.contract"))


# -- fab hosts against moto ------------------------------------------------------------------

def _ec2(moto_server):
    return boto3.client("ec2", region_name=REGION, endpoint_url=moto_server,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture(scope="module")
def fleet(moto_server):
    """Instances tagged like the guides, in every environment, some stopped.
    Made once for the module; a test that adds an instance terminates it."""
    import urllib.request

    # a clean EC2: instances of other modules would count against max_hosts
    urllib.request.urlopen(urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST")).read()
    ec2 = _ec2(moto_server)
    want = {}
    for system, (pattern, _, _) in SYSTEMS.items():
        for env in ("dev", "prod", "staging"):
            name = pattern.format(env=env)
            p = INV / f"{system}-{env}.yaml"
            cap = (yaml.safe_load(p.read_text())["hosts"]["ec2"].get("max_hosts") or 2) if p.exists() else 2
            n = min(2, cap) if env == "prod" else 1
            run = ec2.run_instances(ImageId="ami-12345678", MinCount=n, MaxCount=n, TagSpecifications=[
                {"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": name}]}])["Instances"]
            stopped = ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1, TagSpecifications=[
                {"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": name}]}])["Instances"]
            ec2.stop_instances(InstanceIds=[i["InstanceId"] for i in stopped])
            ids = [i["InstanceId"] for i in run]
            desc = ec2.describe_instances(InstanceIds=ids)["Reservations"][0]["Instances"]
            want[(system, env)] = {"ids": set(ids), "private": {i["PrivateIpAddress"] for i in desc},
                                   "public": {i.get("PublicIpAddress") for i in desc},
                                   "stopped": stopped[0]["InstanceId"]}
    return want


@pytest.mark.parametrize("system, env", pairs())
def test_fab_hosts_resolves_against_moto(fab, fleet, moto_server, aws_env, system, env):
    name = f"{system}-{env}"
    local = INV / f"{name}.local.yaml"
    if local.exists():
        pytest.skip(f"{local} overrides the committed inventory on this machine")
    r = fab("hosts", "-i", name, env={**aws_env, "AWS_ENDPOINT_URL": moto_server})
    assert r.returncode == 0, r.stdout + r.stderr
    w = fleet[(system, env)]
    inv = load_inventory(str(INV / f"{name}.yaml"))
    addrs = w["public"] if inv.get("hosts.ec2.address") == "public_ip" else w["private"]
    rows = [ln.split() for ln in r.stdout.splitlines() if " ec2 " in ln]
    assert {row[1] for row in rows} == addrs, r.stdout
    assert all(row[2] == "ec2-user" for row in rows)
    shown_ids = set(re.findall(r"\bi-[0-9a-f]+\b", r.stdout))
    assert w["ids"] <= shown_ids and w["stopped"] not in shown_ids
    other = fleet[(system, "staging")]
    assert not (other["ids"] & shown_ids)
    assert f"{len(w['ids'])} host(s)" in r.stdout


def test_fab_hosts_refuses_more_than_max_hosts(fab, fleet, moto_server, aws_env):
    ec2 = _ec2(moto_server)
    extra = ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1, TagSpecifications=[
        {"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": "fitters-log-prod-ota"}]}])["Instances"]
    try:
        r = fab("hosts", "-i", "ota-prod", env={**aws_env, "AWS_ENDPOINT_URL": moto_server})
    finally:
        ec2.terminate_instances(InstanceIds=[i["InstanceId"] for i in extra])
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "max_hosts=1" in r.stderr and "ota-prod.yaml" in r.stderr


# -- what bootstrap, deploy and verify make of them (before connecting) -----------------------

@pytest.mark.parametrize("name", committed())
def test_tasks_accept_them_before_connecting(inv_dir, name):
    """The same planning each task does before it connects: bootstrap's app
    spec, deploy's source (local artifacts and compose files exist), verify's
    check list."""
    sources = pytest.importorskip("tasks.release.sources")
    bootstrap = pytest.importorskip("tasks.cli.bootstrap")
    spec_mod = pytest.importorskip("tasks.verify.spec")
    inv = load_inventory(str(inv_dir / f"{name}.yaml"))
    bootstrap.app_spec(inv)
    src = sources.plan_source(inv, tag="1.0.0" if inv.get("deploy.source") in ("image", "compose") else None)
    assert src.kind == inv.get("deploy.source")
    if src.kind == "compose":
        assert b"${API_TAG}" in src.compose_file and src.tag_vars == ["API_TAG", "CLIENT_TAG"]
    if src.kind == "image":
        assert src.image.endswith(":1.0.0")
        if name.startswith("sandbox-"):
            assert src.image == "10.231.0.1:5000/fabship/docker-service:1.0.0"
    from tasks.config.hosts import Host

    host = Host(name="h8", address="10.231.0.18", user="root", port=22, source="test")
    spec = spec_mod.build_spec(inv, host)
    assert {c.name for c in spec.http_checks} == {c["name"] for c in inv.get("verify.checks") or []}
