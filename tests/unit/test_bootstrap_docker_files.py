"""Docker secrets and certificates (tasks/resources/docker_files.py): the inventory
(relative paths, one-line errors before connecting), the plan from facts, the
exact remote script, running that script locally (modes from the first byte,
several files on one stdin, idempotent), deploy's mounts and verify's checks."""
import base64
import grp
import os
import pwd
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from tasks.verify import checks as C

from tasks.verify import spec as CS

from tasks.verify import probes as CP
from tasks.resources import docker_files as D
from tasks.cli.bootstrap import facts_request
from tasks.config.app import app_spec
from tasks.core.commands import Secret
from tasks.core.errors import ConfigError
from tasks.facts.script import FactsRequest, Stat, facts_cmd, parse_facts
from tasks.config.inventory import load_inventory
from tasks.config.hosts import Host

PASSWORD = b"s3cr3t-db-password-value\n"
CA = b"-----BEGIN CERTIFICATE-----\nMIIBdummy\n-----END CERTIFICATE-----\n"
HOST = Host(name="h8", address="10.231.0.18", user="root", port=22, source="test")


def write_inv(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def base(**docker) -> dict:
    return {"hosts": {"static": {"h8": "10.231.0.18"}},
            "app": {"name": "svc", "kind": "docker", "port": 8080},
            "nginx": {"enabled": False},
            "docker": {"image": "reg/svc", "container_port": 8080, **docker},
            "deploy": {"source": "image"}}


@pytest.fixture
def files(tmp_path):
    d = tmp_path / "local"
    d.mkdir()
    (d / "db-password").write_bytes(PASSWORD)
    (d / "db-password").chmod(0o600)
    (d / "db-ca.pem").write_bytes(CA)
    return d


@pytest.fixture
def inv(tmp_path, files):
    p = write_inv(tmp_path / "svc.yaml", base(
        secrets_dir="/opt/svc/secrets", secret_files={"db-password": "local/db-password"},
        certs_dir="/opt/svc/certs", cert_files={"db-ca.pem": "local/db-ca.pem"}))
    return load_inventory(str(p))


# -- the inventory ------------------------------------------------------------------------

def test_layout_modes_owners_mounts(inv, files):
    df = D.plan(inv)
    (s, c) = df.sets
    assert (s.kind, s.dir, s.owner, s.group, s.mode, s.mount) == ("secrets", "/opt/svc/secrets", "root", "root",
                                                                 "0700", "/run/secrets")
    assert (c.kind, c.dir, c.owner, c.group, c.mode, c.mount) == ("certs", "/opt/svc/certs", "root", "root",
                                                                 "0755", "/certs")
    (pw,), (ca,) = s.files, c.files
    assert (pw.path, pw.mode, pw.key, pw.local) == ("/opt/svc/secrets/db-password", "0400",
                                                    "docker.secret_files.db-password", files / "db-password")
    assert (ca.path, ca.mode, ca.key, ca.local) == ("/opt/svc/certs/db-ca.pem", "0444",
                                                    "docker.cert_files.db-ca.pem", files / "db-ca.pem")
    assert df.contents == {pw.path: PASSWORD, ca.path: CA}
    assert df.warnings == []


def test_relative_paths_follow_the_file_that_set_them(tmp_path, monkeypatch):
    # common/base.yaml names files relative to common/; the top file relative to itself
    write_inv(tmp_path / "common" / "base.yaml", {"docker": {
        "secrets_dir": "/opt/svc/secrets", "secret_files": {"db-password": "secrets/pw"},
        "certs_dir": "/opt/svc/certs", "cert_files": {"db-ca.pem": "../top-ca.pem"}}})
    top = base()
    top["include"] = ["common/base.yaml"]
    top["docker"]["secret_files"] = {"api-key": "keys/api"}
    p = write_inv(tmp_path / "top.yaml", top)
    monkeypatch.chdir("/")
    inv = load_inventory(str(p))
    df = D.plan_layout(inv)
    got = {f.name: f.local for f in df.files}
    assert got == {"db-password": tmp_path / "common" / "secrets" / "pw", "api-key": tmp_path / "keys" / "api",
                   "db-ca.pem": tmp_path / "top-ca.pem"}
    assert {f.name: f.source for f in df.files}["db-password"] == str(tmp_path / "common" / "base.yaml")
    # --set: relative to the working directory
    monkeypatch.chdir(tmp_path)
    inv = load_inventory(str(p), overrides=["docker.cert_files={db-ca.pem: here.pem}"])
    assert {f.name: f.local for f in D.plan_layout(inv).files}["db-ca.pem"] == tmp_path / "here.pem"


def test_a_missing_file_names_the_inventory_file_key_and_path(tmp_path, files):
    p = write_inv(tmp_path / "svc.yaml", base(secrets_dir="/opt/svc/secrets",
                                              secret_files={"db-password": "local/nope"}))
    with pytest.raises(ConfigError) as e:
        D.plan(load_inventory(str(p)))
    assert str(e.value) == (f"{p}: docker.secret_files.db-password: {tmp_path / 'local' / 'nope'}: no such file")
    p = write_inv(tmp_path / "svc.yaml", base(certs_dir="/opt/svc/certs", cert_files={"ca.pem": "local"}))
    with pytest.raises(ConfigError, match=r"docker.cert_files.ca.pem: .*/local is a directory, expected a file"):
        D.plan(load_inventory(str(p)))


def test_the_bootstrap_task_refuses_before_connecting(tmp_path, files):
    """Through `fab bootstrap`: one line, exit 2, no traceback, no connection
    (the host address is unroutable: a connection attempt would show)."""
    p = write_inv(tmp_path / "svc.yaml", base(secrets_dir="/opt/svc/secrets",
                                              secret_files={"db-password": "local/missing"}))
    data = yaml.safe_load(p.read_text())
    data["hosts"] = {"static": {"h8": "203.0.113.9"}}
    p.write_text(yaml.safe_dump(data))
    r = subprocess.run(["python3", "-m", "fabric", "bootstrap", "-i", str(p)], cwd=Path(__file__).parents[2],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "FABSHIP_RUNS_DIR": str(tmp_path / "runs")})
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"fabship: {p}: docker.secret_files.db-password: {tmp_path / 'local' / 'missing'}: no such file"]
    assert "Traceback" not in r.stdout + r.stderr and "203.0.113.9" not in r.stdout


@pytest.mark.parametrize("docker, key, problem", [
    ({"secret_files": {"pw": "x"}}, "docker.secret_files", "set docker.secrets_dir too"),
    ({"cert_files": {"ca": "x"}}, "docker.cert_files", "set docker.certs_dir too"),
    ({"secrets_dir": "/opt/svc"}, "docker.secrets_dir", "already manages (app layout)"),
    ({"secrets_dir": "/etc/svc"}, "docker.secrets_dir", "already manages (app layout)"),
    ({"secrets_dir": "/opt/svc/s/../x"}, "docker.secrets_dir", "normalised path"),
    ({"secrets_dir": "/opt/s", "certs_dir": "/opt/s"}, "docker.certs_dir", "must be separate"),
    ({"secrets_dir": "/opt/s", "certs_dir": "/opt/s/certs"}, "docker.certs_dir", "must be separate"),
    ({"secrets_dir": "/opt/s", "certs_dir": "/opt/c", "certs_mount": "/run/secrets"}, "docker.certs_mount",
     "also docker.secrets_mount"),
])
def test_inconsistent_settings_are_refused(tmp_path, docker, key, problem):
    p = write_inv(tmp_path / "svc.yaml", base(**docker))
    with pytest.raises(ConfigError) as e:
        D.plan(load_inventory(str(p)))
    assert e.value.key == key and problem in e.value.problem and e.value.path == str(p)


@pytest.mark.parametrize("docker, key", [
    ({"secret_files": {"../pw": "x"}}, "docker.secret_files.../pw"),
    ({"secret_files": {".hidden": "x"}}, "docker.secret_files..hidden"),
    ({"cert_files": {"a/b": "x"}}, "docker.cert_files.a/b"),
    ({"secrets_dir": "relative/dir"}, "docker.secrets_dir"),
    ({"secrets_dir": "/opt/a,b"}, "docker.secrets_dir"),
    ({"certs_mount": "/certs:rw"}, "docker.certs_mount"),
    ({"secrets_owner": "1000"}, "docker.secrets_owner"),
])
def test_schema_refuses_bad_names_and_paths(tmp_path, docker, key):
    p = write_inv(tmp_path / "svc.yaml", base(**docker))
    with pytest.raises(ConfigError) as e:
        load_inventory(str(p))
    assert e.value.key == key


def test_loose_local_secret_file_is_a_warning_and_values_are_masked(inv, files):
    (files / "db-password").chmod(0o644)
    df = D.plan(inv)
    assert df.warnings == [f"{files / 'db-password'} (docker.secret_files.db-password) is readable by other "
                           "local users (mode 0644); chmod 600 it"]
    vals = [v.reveal() for v in D.secret_values(df)]
    assert vals == [PASSWORD.decode().strip()]       # certificates are public: not masked
    pem = b"-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nBKcwggSjAgEAAoIBAQC7\n-----END PRIVATE KEY-----\n"
    (files / "db-password").write_bytes(pem)
    vals = [v.reveal() for v in D.secret_values(D.plan(inv))]
    assert vals[0] == pem.decode().strip() and "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC" in vals
    assert "BKcwggSjAgEAAoIBAQC7" in vals and not any(v.startswith("-----") for v in vals[1:])
    (files / "db-password").write_bytes(b"\xff\xfe\x00binary")
    assert D.secret_values(D.plan(inv)) == []


# -- facts: stat + sha256, never contents ----------------------------------------------------------

def test_facts_request_hashes_the_files_but_never_reads_them(inv):
    df = D.plan(inv)
    req = facts_request(app_spec(inv), HOST, None, dry_run=True, files=df)
    assert {"/opt/svc/secrets", "/opt/svc/certs"} <= set(req.paths)
    assert {"/opt/svc/secrets/db-password", "/opt/svc/certs/db-ca.pem"} <= set(req.hash_paths)
    assert not {p for p in req.contents if p.startswith("/opt/svc/")}    # dry-run diffs: templated files only
    script = facts_cmd(req).render()
    assert "base64 -w0 < /opt/svc/secrets" not in script and PASSWORD.decode().strip() not in script


# -- plan from facts ---------------------------------------------------------------------------

def facts_with(stats=None, sha=None):
    f = parse_facts("@@ end\n")
    f.stats.update(stats or {})
    f.sha256.update(sha or {})
    return f


def test_plan_for_a_fresh_host(inv):
    df = D.plan(inv)
    c = D.plan_changes(df, facts_with())
    assert c.lines == ["install -d -o root -g root -m 0700 -- /opt/svc/secrets",
                       "install -d -o root -g root -m 0755 -- /opt/svc/certs"]
    assert [f.name for f in c.installs] == ["db-password", "db-ca.pem"]
    assert c.names == ["create /opt/svc/secrets (root:root 0700)", "write secrets/db-password (new)",
                       "create /opt/svc/certs (root:root 0755)", "write certs/db-ca.pem (new)"]
    pw = D.sha256_hex(PASSWORD)[:12]
    assert c.report[1] == f"secrets/db-password: sha256 (new file) -> {pw} (root:root 0400)"


def good_stats():
    return {"/opt/svc/secrets": Stat("directory", "root", "root", "700", 4096),
            "/opt/svc/secrets/db-password": Stat("regular file", "root", "root", "400", len(PASSWORD)),
            "/opt/svc/certs": Stat("directory", "root", "root", "755", 4096),
            "/opt/svc/certs/db-ca.pem": Stat("regular file", "root", "root", "444", len(CA))}


def good_sha():
    return {"/opt/svc/secrets/db-password": D.sha256_hex(PASSWORD), "/opt/svc/certs/db-ca.pem": D.sha256_hex(CA)}


def test_plan_when_up_to_date_is_empty(inv):
    assert not D.plan_changes(D.plan(inv), facts_with(good_stats(), good_sha()))


def test_plan_only_what_differs(inv):
    stats, sha = good_stats(), good_sha()
    stats["/opt/svc/secrets"] = Stat("directory", "root", "root", "755", 4096)          # loose dir
    sha["/opt/svc/certs/db-ca.pem"] = "ab" * 32                                          # rotated cert
    stats["/opt/svc/secrets/db-password"] = Stat("regular file", "root", "root", "644", 1)   # loose file
    c = D.plan_changes(D.plan(inv), facts_with(stats, sha))
    assert c.lines == ["install -d -o root -g root -m 0700 -- /opt/svc/secrets"]
    assert [f.name for f in c.installs] == ["db-password", "db-ca.pem"]
    assert c.names == ["/opt/svc/secrets: root:root 0755 -> root:root 0700",
                       "secrets/db-password: root:root 0644 -> root:root 0400",
                       "write certs/db-ca.pem (content differs)"]
    assert c.report[2] == f"certs/db-ca.pem: sha256 abababababab -> {D.sha256_hex(CA)[:12]}"


def test_plan_problems_stop_the_run_before_changes(inv, tmp_path):
    stats = {"/opt/svc/secrets": Stat("regular file", "root", "root", "600", 3),
             "/opt/svc/certs/db-ca.pem": Stat("directory", "root", "root", "755", 4096)}
    probs = D.plan_problems(D.plan(inv), facts_with(stats), known_users=("root",), known_groups=("root",))
    assert probs == ["/opt/svc/secrets (docker.secrets_dir) exists and is a regular file, not a directory",
                     "/opt/svc/certs/db-ca.pem (docker.cert_files.db-ca.pem) exists and is a directory, "
                     "not a regular file"]
    p = write_inv(tmp_path / "o.yaml", base(secrets_dir="/opt/svc/secrets", secrets_owner="spring"))
    probs = D.plan_problems(D.plan(load_inventory(str(p))), facts_with(), known_users=("root",),
                            known_groups=("root",))
    assert probs == ["docker.secrets_owner spring: no such user on the host"]


# -- the remote script --------------------------------------------------------------------------

def test_apply_script_is_exact_and_carries_no_secret(inv):
    df = D.plan(inv)
    c = D.plan_changes(df, facts_with(good_stats(), {**good_sha(), "/opt/svc/secrets/db-password": "0" * 64}))
    cmd, payload = D.apply_cmd(df, c)
    text = cmd.render()
    assert payload == D.sha256_hex(PASSWORD).encode() + b"\n" + PASSWORD
    for leak in (PASSWORD.decode().strip(), D.sha256_hex(PASSWORD)):
        assert leak not in text                                   # neither the value nor its hash on a command line
    from tasks.resources.envfile import install_cmd

    inner = install_cmd("/opt/svc/secrets/db-password", "root", "root", "0400", None, keep_previous=0,
                        size=len(PASSWORD))
    assert cmd.parts == ["sh", "-c", "set -eu\n" + inner.render() + " >/dev/null"]
    body = inner.parts[2].split("\n")
    assert body[:3] == ["set -eu", "f=/opt/svc/secrets/db-password owner=root group=root mode=0400 keep=0",
                        'want=$(head -c 65); case $want in *[!0-9a-f]*|"") echo "bad sha256 on stdin" >&2; exit 4;; esac']
    assert f'head -c {len(PASSWORD)} > "$tmp"' in body and "umask 077" in body and 'sync -- "$tmp" 2>/dev/null || sync' \
        in body


# -- the script, run for real (locally, as the current user) --------------------------------------

def local_set(root: Path, owner: str, group: str) -> D.DockerFiles:
    sdir, cdir = str(root / "secrets"), str(root / "certs")
    df = D.DockerFiles(sets=[
        D.FileSet("secrets", sdir, owner, group, "0700", "/run/secrets", [
            D.ManagedFile("secrets", n, f"{sdir}/{n}", f"docker.secret_files.{n}", "inv.yaml", Path("/x"),
                          owner, group, "0400") for n in ("db-password", "api-key", "empty")]),
        D.FileSet("certs", cdir, owner, group, "0755", "/certs", [
            D.ManagedFile("certs", "ca.pem", f"{cdir}/ca.pem", "docker.cert_files.ca.pem", "inv.yaml", Path("/x"),
                          owner, group, "0444")])])
    df.contents = {f"{sdir}/db-password": PASSWORD, f"{sdir}/api-key": os.urandom(70000),
                   f"{sdir}/empty": b"", f"{cdir}/ca.pem": CA}
    return df


def local_facts(df: D.DockerFiles):
    req = FactsRequest(paths=[s.dir for s in df.sets], hash_paths=df.file_paths())
    out = subprocess.run(["sh", "-c", facts_cmd(req).parts[2]], capture_output=True, text=True).stdout
    return parse_facts(out)


def run_local(cmd, payload: bytes) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", cmd.parts[2]], input=payload, capture_output=True, timeout=60)


def test_script_installs_every_file_from_one_stdin_and_is_idempotent(tmp_path):
    me, mygrp = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
    root = tmp_path / "opt" / "svc"
    df = local_set(root, me, mygrp)
    c = D.plan_changes(df, local_facts(df))
    assert len(c.installs) == 4 and len(c.lines) == 2
    r = run_local(*D.apply_cmd(df, c))
    assert r.returncode == 0, r.stderr
    for path, data in df.contents.items():
        assert Path(path).read_bytes() == data
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
    assert mode(root / "secrets") == 0o700 and mode(root / "certs") == 0o755 and mode(root) == 0o755
    assert {mode(p) for p in (root / "secrets").iterdir()} == {0o400}
    assert mode(root / "certs" / "ca.pem") == 0o444
    assert sorted(os.listdir(root / "secrets")) == ["api-key", "db-password", "empty"]   # no temp/prev files
    # facts now say: nothing to do
    assert not D.plan_changes(df, local_facts(df))
    # one secret rotated, one loosened by hand: only those two are written again
    df.contents[str(root / "secrets" / "db-password")] = b"rotated\n"
    os.chmod(root / "certs" / "ca.pem", 0o644)
    c = D.plan_changes(df, local_facts(df))
    assert [f.name for f in c.installs] == ["db-password", "ca.pem"] and not c.lines
    r = run_local(*D.apply_cmd(df, c))
    assert r.returncode == 0, r.stderr
    assert (root / "secrets" / "db-password").read_bytes() == b"rotated\n"
    assert mode(root / "certs" / "ca.pem") == 0o444 and not D.plan_changes(df, local_facts(df))


def test_a_truncated_upload_never_lands(tmp_path):
    me, mygrp = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
    df = local_set(tmp_path / "svc", me, mygrp)
    cmd, payload = D.apply_cmd(df, D.plan_changes(df, local_facts(df)))
    r = run_local(cmd, payload[:len(payload) - 10])
    assert r.returncode != 0 and b"sha256 mismatch" in r.stderr
    assert not (tmp_path / "svc" / "certs" / "ca.pem").exists()
    assert not [n for n in os.listdir(tmp_path / "svc" / "certs") if n.startswith(".")]   # temp file removed


# -- the bootstrap step: dry-run names only, the real run reports hashes -------------------------
# (table rows "docker files: ..." in tests/unit/test_resources_table.py, on the shared fake context)


# -- deploy: read-only mounts ---------------------------------------------------------------------

def test_mount_args(inv, tmp_path):
    assert D.mount_args(inv) == ["--mount", "type=bind,source=/opt/svc/secrets,target=/run/secrets,readonly",
                                 "--mount", "type=bind,source=/opt/svc/certs,target=/certs,readonly"]
    # inventories that mounted them by hand keep working (no duplicate mount point)
    assert D.mount_args(inv, ["-v", "/opt/svc/secrets:/run/secrets:ro"]) == [
        "--mount", "type=bind,source=/opt/svc/certs,target=/certs,readonly"]
    assert D.mount_args(inv, ["--mount=type=bind,src=/elsewhere,dst=/certs", "-v/x:/run/secrets"]) == []
    p = write_inv(tmp_path / "plain.yaml", base())
    assert D.mount_args(load_inventory(str(p))) == []


def test_mounts_present_check(inv, tmp_path):
    cmd = D.mounts_present_cmd(inv)
    assert cmd.render() == ('for d in /opt/svc/secrets /opt/svc/certs; do [ -d "$d" ] || { echo "$d does not exist '
                            '(docker.secrets_dir/certs_dir): run fab bootstrap" >&2; exit 3; }; done')
    assert D.mounts_present_cmd(inv, ["-v", "/opt/svc/secrets:/run/secrets:ro"]).render().startswith(
        "for d in /opt/svc/certs;")
    assert D.mounts_present_cmd(load_inventory(str(write_inv(tmp_path / "plain.yaml", base())))) is None
    (tmp_path / "s").mkdir()
    p = write_inv(tmp_path / "here.yaml", base(secrets_dir=str(tmp_path / "s"), certs_dir=str(tmp_path / "c")))
    r = subprocess.run(["sh", "-c", D.mounts_present_cmd(load_inventory(str(p))).render()], capture_output=True,
                       text=True)
    assert r.returncode == 3 and r.stderr == f"{tmp_path / 'c'} does not exist (docker.secrets_dir/certs_dir): " \
                                            "run fab bootstrap\n"
    (tmp_path / "c").mkdir()
    assert subprocess.run(["sh", "-c", D.mounts_present_cmd(load_inventory(str(p))).render()]).returncode == 0


def test_docker_run_gets_the_mounts(inv):
    from tasks.config.app import Layout
    from tasks.release.activation import docker_run_cmd

    lay = Layout.from_inventory(inv)
    cmd = docker_run_cmd(lay, "svc-r1", "r1", "reg/svc:1", 8080, 8080, bind="",
                         run_args=D.mount_args(inv) + ["--memory", "256m"])
    run = cmd.parts[2].split("\n")[-1]
    assert run.endswith("-p 8080:8080 --mount type=bind,source=/opt/svc/secrets,target=/run/secrets,readonly "
                        "--mount type=bind,source=/opt/svc/certs,target=/certs,readonly --memory 256m reg/svc:1"), run


# -- verify: docker_secrets / docker_certs --------------------------------------------------------

def frame(name, rc, out):
    return f"{CP.MARK} {name} {rc}\n{base64.b64encode(out.encode()).decode()}\n"


def probe_for(inv, secrets_out, certs_out):
    spec = CS.build_spec(inv, HOST)
    facts = CP.parse_facts(frame("docker_secrets", 0, secrets_out) + frame("docker_certs", 0, certs_out))
    return spec, C.Probe(spec, facts)


GOOD_S = ("/opt/svc/secrets|root|root|700|directory\n/opt/svc/secrets/db-password|root|root|400|regular file\n"
          "--\ndb-password\n")
GOOD_C = "/opt/svc/certs|root|root|755|directory\n/opt/svc/certs/db-ca.pem|root|root|444|regular file\n--\ndb-ca.pem\n"


def run_checks(inv, s_out, c_out):
    spec, probe = probe_for(inv, s_out, c_out)
    names = [c for c in C.checks_for(spec) if c.name in ("docker_secrets", "docker_certs")]
    return {r.name: (r.status, r.message) for r in C.evaluate(names, probe)}


def test_verify_selects_the_checks_from_the_inventory(inv, tmp_path):
    spec = CS.build_spec(inv, HOST)
    names = [c.name for c in C.checks_for(spec)]
    assert "docker_secrets" in names and "docker_certs" in names
    assert {c.name for c in C.select(C.checks_for(spec), stage="bootstrap")} >= {"docker_secrets", "docker_certs"}
    assert "docker_secrets" not in {c.name for c in C.select(C.checks_for(spec), stage="rotate-env")}
    script = CP.facts_script(spec)
    assert "probe docker_secrets" in script and "ls -A1 -- /opt/svc/secrets" in script
    assert "cat " not in script.split("probe docker_secrets", 1)[1].split("\n", 1)[0]   # names, never contents
    p = write_inv(tmp_path / "plain.yaml", base())
    assert not {"docker_secrets", "docker_certs"} & {c.name for c in C.checks_for(CS.build_spec(
        load_inventory(str(p)), HOST))}


def test_verify_passes_on_the_promised_state(inv):
    res = run_checks(inv, GOOD_S, GOOD_C)
    assert res["docker_secrets"] == ("passed", "/opt/svc/secrets 0700 root:root, 1 file(s) 0400")
    assert res["docker_certs"] == ("passed", "/opt/svc/certs 0755 root:root, 1 file(s) 0444")


def test_verify_messages_name_path_and_expectation(inv):
    loose = GOOD_S.replace("|700|", "|755|").replace("|400|", "|644|") + "stray.txt\n"
    res = run_checks(inv, loose, "/opt/svc/certs|MISSING\n/opt/svc/certs/db-ca.pem|MISSING\n--\n")
    assert res["docker_secrets"] == ("failed", "/opt/svc/secrets has mode 0755, expected 0700 (world bits set); "
                                               "/opt/svc/secrets/db-password has mode 0644, expected 0400 (world bits "
                                               "set) (fab bootstrap restores them)")
    assert res["docker_certs"] == ("failed", "docker.certs_dir /opt/svc/certs is missing (run fab bootstrap)")
    res = run_checks(inv, GOOD_S.replace("root|root|400", "svc|svc|400") + "stray.txt\n",
                     GOOD_C.replace("/opt/svc/certs/db-ca.pem|root|root|444|regular file",
                                    "/opt/svc/certs/db-ca.pem|MISSING"))
    assert res["docker_secrets"][1] == ("/opt/svc/secrets/db-password is owned by svc:svc, expected root:root "
                                        "(fab bootstrap restores them)")
    assert res["docker_certs"][1] == "/opt/svc/certs/db-ca.pem is missing (fab bootstrap restores them)"
    res = run_checks(inv, GOOD_S + "stray.txt\n", GOOD_C)
    assert res["docker_secrets"] == ("passed", "/opt/svc/secrets 0700 root:root, 1 file(s) 0400; also there, "
                                               "not managed by fabship: stray.txt")
