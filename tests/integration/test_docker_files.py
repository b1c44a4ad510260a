"""Docker secrets and certificates on a real host (h8): bootstrap installs
them with their modes, repairs drift, rotates a secret by hash, refuses a
missing local file before connecting, never shows a secret (nor its hash on
a command line), and deploy mounts both read-only into the container."""
import hashlib
import json
import shlex

import yaml

from test_e2e_support import INV, Flow, h8, push_samples, require_docker  # noqa: F401

APP = "ledgerly-api"
SECRETS, CERTS = f"/opt/{APP}/secrets", f"/opt/{APP}/certs"
PASSWORD = "canary-db-password-7f3a9c"
TOKEN = "canary-api-token-0b41d2e8"


def sha(data: str | bytes) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def setup(tmp_path, **docker) -> tuple[str, dict]:
    """An inventory over the committed sandbox-springsvc with local secrets
    (0600, so no warning) in tmp_path; returns (its path, local files)."""
    local = tmp_path / "secrets"
    local.mkdir()
    files = {"db-password": PASSWORD + "\n", "api-token": TOKEN}
    for name, text in files.items():
        (local / name).write_text(text)
        (local / name).chmod(0o600)
    data = {"include": [str(INV / "sandbox-springsvc.yaml")],
            "docker": {"secret_files": {n: f"secrets/{n}" for n in files}, **docker}}
    inv = tmp_path / "springsvc-files.yaml"
    inv.write_text(yaml.safe_dump(data))
    return str(inv), files


def leaks(text: str) -> list[str]:
    return [s for s in (PASSWORD, TOKEN, sha(PASSWORD + "\n"), sha(TOKEN)) if s in text]


def test_secrets_and_certs_lifecycle(h8, tmp_path):  # noqa: F811
    require_docker(h8)
    inv, files = setup(tmp_path)
    f = Flow(h8, tmp_path, inv)
    ca = (INV / "sandbox-env" / "springsvc" / "db-ca.pem").read_bytes()

    r = f.fab("bootstrap")
    assert not leaks(r.stdout + r.stderr) and "warning" not in r.stdout + r.stderr
    record = json.dumps(f.record("bootstrap"))
    assert not leaks(record), "a secret or its full hash is in the run record (commands included)"
    assert f.stat(SECRETS) == "root:root:700" and f.stat(CERTS) == "root:root:755"
    for name, text in files.items():
        assert f.stat(f"{SECRETS}/{name}") == "root:root:400" and f.sha(f"{SECRETS}/{name}") == sha(text)
    assert f.stat(f"{CERTS}/db-ca.pem") == "root:root:444" and f.sha(f"{CERTS}/db-ca.pem") == sha(ca)
    assert f.must(f"ls -A {SECRETS}").split() == ["api-token", "db-password"]   # no temp or .prev files
    assert f.must(f"ls -A {CERTS}").split() == ["db-ca.pem"]
    step = next(s for s in f.host_result("bootstrap")["steps"] if s["name"] == "docker files")
    assert f"secrets/db-password: sha256 (new file) -> {sha(PASSWORD + chr(10))[:12]}" in step["message"]

    # drift: verify names it, bootstrap repairs only that, verify passes again
    f.must(f"chmod 755 {SECRETS} && chmod 644 {SECRETS}/api-token && chown nobody {CERTS}/db-ca.pem")
    r = f.fab("verify", "--stage", "bootstrap", expect=1)
    assert f"{SECRETS} has mode 0755, expected 0700" in r.stdout
    assert f"{SECRETS}/api-token has mode 0644, expected 0400" in r.stdout
    assert f"{CERTS}/db-ca.pem is owned by nobody:root, expected root:root" in r.stdout
    f.fab("bootstrap")
    assert f.changed_steps("bootstrap") == ["docker files"]
    assert f.stat(SECRETS) == "root:root:700" and f.stat(f"{SECRETS}/api-token") == "root:root:400"
    assert f.stat(f"{CERTS}/db-ca.pem") == "root:root:444"
    f.fab("verify", "--stage", "bootstrap")

    # rotate one secret: dry-run names it and changes nothing; the real run reports hashes only
    new = "rotated-canary-password-55e1\n"
    (tmp_path / "secrets" / "db-password").write_text(new)
    r = f.fab("bootstrap", "--dry-run")
    assert "would change docker files: write secrets/db-password (content differs)" in r.stdout
    assert sha(new)[:12] not in r.stdout and new.strip() not in r.stdout
    assert f.sha(f"{SECRETS}/db-password") == sha(PASSWORD + "\n")
    r = f.fab("bootstrap")
    assert f"secrets/db-password: sha256 {sha(PASSWORD + chr(10))[:12]} -> {sha(new)[:12]}" in r.stdout
    assert new.strip() not in r.stdout + r.stderr + json.dumps(f.record("bootstrap"))
    assert f.sha(f"{SECRETS}/db-password") == sha(new) and f.stat(f"{SECRETS}/db-password") == "root:root:400"
    assert f.changed_steps("bootstrap") == ["docker files"]
    f.fab("bootstrap")
    assert f.changed_steps("bootstrap") == []

    # a missing local file: one line naming the inventory file and key, nothing changes on the host
    (tmp_path / "secrets" / "api-token").unlink()
    before = f.must(f"stat -c '%n %a %Y' {SECRETS} {SECRETS}/* {CERTS}/*")
    r = f.fab("bootstrap", expect=2)
    assert r.stderr.strip().splitlines() == [
        f"fabship: {inv}: docker.secret_files.api-token: {tmp_path / 'secrets' / 'api-token'}: no such file"]
    assert f.must(f"stat -c '%n %a %Y' {SECRETS} {SECRETS}/* {CERTS}/*") == before
    (tmp_path / "secrets" / "api-token").write_text(TOKEN)
    (tmp_path / "secrets" / "api-token").chmod(0o600)

    # the container sees both directories read-only, with every file
    push_samples(h8, "1.0.0")
    f.fab("deploy", "--tag", "1.0.0")
    name = f.must(f"docker ps --filter label=fabship.app={APP} --format '{{{{.Names}}}}'").split()[0]
    c = json.loads(f.must(f"docker inspect {shlex.quote(name)}"))[0]
    mounts = {m["Destination"]: m for m in c["Mounts"]}
    assert (mounts["/run/secrets"]["Source"], mounts["/run/secrets"]["RW"]) == (SECRETS, False)
    assert (mounts["/certs"]["Source"], mounts["/certs"]["RW"]) == (CERTS, False)
    assert c["Config"]["User"] == ""   # the image runs as root: why root:root 0700/0400 is enough
    info = json.loads(f.http("http://127.0.0.1:8080/actuator/info")[2])
    assert (info["secrets"], info["secretFiles"], info["certs"], info["certFiles"]) == ("present", 2, "present", 1)
    r = f.fab("verify")
    assert "docker_secrets: /opt/ledgerly-api/secrets 0700 root:root, 2 file(s) 0400" in r.stdout

    # restart strategy: a docker run that fails (here a mounted dir gone, then a bad run_arg)
    # after the old container stopped must not leave nothing serving
    f.must(f"mv {CERTS} {CERTS}.away")
    r = f.fab("deploy", "--tag", "2.0.0", expect=1)
    assert f"{CERTS} does not exist (docker.secrets_dir/certs_dir): run fab bootstrap" in r.stdout
    f.must(f"mv {CERTS}.away {CERTS}")
    assert f.http("http://127.0.0.1:8080/version")[2].strip() == "1.0.0"
    r = f.fab("deploy", "--tag", "2.0.0", "--set", 'docker.run_args=["--memory", "bogus"]', expect=1)
    assert "could not start" in r.stdout and "the old container is serving again" in r.stdout
    assert f.http("http://127.0.0.1:8080/version")[2].strip() == "1.0.0"


def test_secrets_owned_by_the_app_user(h8, tmp_path):  # noqa: F811
    """An image that runs as a non-root user: the files belong to a host user
    with its uid (here the app user, which bootstrap creates in the same run)."""
    require_docker(h8)
    inv, files = setup(tmp_path, secrets_owner=APP, secrets_group=APP)
    f = Flow(h8, tmp_path, inv)
    f.fab("bootstrap")
    assert f.stat(SECRETS) == f"{APP}:{APP}:700"
    assert {f.stat(f"{SECRETS}/{n}") for n in files} == {f"{APP}:{APP}:400"}
    assert f.stat(f"{CERTS}/db-ca.pem") == "root:root:444"
    f.fab("bootstrap")
    assert f.changed_steps("bootstrap") == []
