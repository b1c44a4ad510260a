"""System 1 end to end on h8: the OTA update server (apps/ota-server) with
inventories/sandbox-ota.yaml, following docs/systems.md: bootstrap, deploy
from git (v1, v2), a broken release rolled back automatically, rotate-env,
rollback, verify; the guide's HTTP checks after each change."""
import json
import secrets

from test_e2e_support import DOMAIN, HOST, INV, REPO, Flow, env_file, git_commit_version, h8  # noqa: F401

APP = "xavia-ota"
ENV_PATH = "/etc/xavia-ota/ota.env"
SAMPLE_ENV = INV / "sandbox-env" / "ota.env"
PASSWORD = "sandbox-admin-password"  # the dummy value in the sample env file
EXPO = ["-H", "expo-protocol-version: 1", "-H", "expo-platform: ios", "-H", "expo-runtime-version: 1.0.0"]
# inventories/common/ota.yaml verify.checks: the guide's checks, login flow included
GUIDE_CHECKS = ("http:manifest", "http:releases_need_login", "http:login", "http:releases_with_session")


def login(f: Flow, password: str) -> tuple[int, str]:
    """POST /api/login through nginx+TLS; (status, session cookie)."""
    status, headers, _ = f.https("/api/login", "-X", "POST", "-H", "content-type: application/json",
                                 stdin_body=json.dumps({"password": password}))
    cookie = headers.get("set-cookie", "").split(";", 1)[0]
    return status, cookie


def guide_checks(f: Flow, version: str) -> None:
    """The guide's checks, as `fab verify` runs them from the inventory: the
    manifest answers 200 with the expo headers; /api/releases answers 401;
    POST /api/login with ${ADMIN_PASSWORD} (read from the env file on the host),
    then /api/releases answers 200 with the session cookie. Plus one look
    independent of fabship (curl): the manifest serves this version."""
    r = f.fab("verify", "--only", "http:*")
    got = {c["name"]: c["status"] for c in f.record("verify")["extra"]["verify"][HOST]}
    assert got == {n: "passed" for n in GUIDE_CHECKS}, r.stdout
    status, headers, body = f.https("/api/manifest", *EXPO)
    assert status == 200, f"manifest: {status} {body[:200]}"
    assert headers.get("expo-protocol-version") == "1" and headers.get("expo-sfv-version") == "0", headers
    manifest = json.loads(body)
    assert manifest["runtimeVersion"] == "1.0.0" and manifest["launchAsset"]["url"]
    assert manifest["extra"]["expoClient"]["version"] == version


def served_version(f: Flow) -> str:
    status, _, body = f.https("/api/version")
    assert status == 200, f"/api/version through nginx: {status} {body[:200]}"
    return json.loads(body)["version"]


def test_ota_server_end_to_end(h8, tmp_path):  # noqa: F811
    f = Flow(h8, tmp_path, "sandbox-ota")

    # -- bootstrap: packages, layout, unit, nginx, TLS from Pebble, the env file
    f.fab("bootstrap")
    f.must("dpkg-query -W nginx git jq unzip nodejs npm certbot >/dev/null")
    assert f.stat(f"/opt/{APP}") == f"root:{APP}:755"
    assert f.stat(ENV_PATH) == f"root:{APP}:600"
    keys = sorted(f.must(f"cut -d= -f1 {ENV_PATH} | grep -v '^#' | grep .").split())
    assert keys == sorted(ln.split("=", 1)[0] for ln in SAMPLE_ENV.read_text().splitlines()
                          if "=" in ln and not ln.startswith("#"))
    unit = f"{APP}.service"
    assert f.unit_prop(unit, "UnitFileState") == "enabled"
    assert ENV_PATH in f.unit_prop(unit, "EnvironmentFiles")
    assert "npm run start" in f.unit_prop(unit, "ExecStart") and "PORT=3000" in f.unit_prop(unit, "ExecStart")
    assert f.unit_prop(unit, "WorkingDirectory") == f"/opt/{APP}/current"
    site = f.must(f"cat /etc/nginx/sites-available/{APP}.conf")
    assert "client_max_body_size 100m" in site.lower() and "/.well-known/acme-challenge/" in site
    assert f"server_name {DOMAIN}" in site
    cert = f.must(f"echo | openssl s_client -connect 127.0.0.1:443 -servername {DOMAIN} 2>/dev/null "
                  "| openssl x509 -noout -issuer -subject -ext subjectAltName")
    assert "Pebble" in cert and DOMAIN in cert, cert
    # a second bootstrap changes nothing
    f.fab("bootstrap")
    assert f.changed_steps("bootstrap") == [], f.host_result("bootstrap")["steps"]

    # -- deploy v1 from git (the guide's redeploy: fetch, checkout main, npm ci, build, restart)
    repo = tmp_path / "xavia-ota"
    c1 = git_commit_version(repo, REPO / "apps" / "ota-server", "1.0.0")
    git = ["--set", "deploy.source=git", "--set", f"deploy.repo={repo}"]
    f.fab("deploy", *git)
    v1 = f.current_release(APP)
    assert f.release_log(APP)[-1]["result"] == "ok"
    assert c1 in json.dumps(f.release_log(APP)[-1]), "the release log names the deployed commit"
    f.must(f"test -s /opt/{APP}/current/.next/BUILD_ID")  # npm run build ran in the release
    assert served_version(f) == "1.0.0"
    guide_checks(f, "1.0.0")
    f.must("ss -ltnH 'sport = :3000' | grep -q 127.0.0.1:3000")  # HOST=127.0.0.1: only nginx is public
    pid1 = f.unit_prop(unit, "MainPID")

    # -- deploy v2
    git_commit_version(repo, REPO / "apps" / "ota-server", "2.0.0")
    f.fab("deploy", *git)
    v2 = f.current_release(APP)
    assert v2 != v1 and {v1, v2} <= set(f.releases(APP))
    assert served_version(f) == "2.0.0" and f.unit_prop(unit, "MainPID") != pid1
    guide_checks(f, "2.0.0")

    # -- a release that fails its health check: deploy fails, v2 keeps serving
    git_commit_version(repo, REPO / "apps" / "ota-server", "3.0.0", fail_health=True)
    r = f.fab("deploy", *git, "--set", "health.retries=5", expect=1)
    assert "health" in (r.stdout + r.stderr).lower()
    assert f.current_release(APP) == v2 and served_version(f) == "2.0.0"
    guide_checks(f, "2.0.0")

    # -- rotate-env: a file that breaks the contract is refused and changes nothing
    before = f.sha(ENV_PATH)
    bad = env_file(tmp_path, SAMPLE_ENV, "bad.env", ADMIN_SESSION_SECRET="abc123")
    r = f.fab("rotate-env", "--env-file", str(bad), expect=2)
    assert "ADMIN_SESSION_SECRET is shorter than min_length 64" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "abc123" not in r.stdout + r.stderr
    assert f.sha(ENV_PATH) == before

    # ... a good one is installed (0600) and applied; old password and sessions stop working
    _, old_cookie = login(f, PASSWORD)
    new_password = "rotated-" + secrets.token_hex(8)
    new_secret = secrets.token_hex(32)
    good = env_file(tmp_path, SAMPLE_ENV, "rotated.env", ADMIN_PASSWORD=new_password,
                    ADMIN_SESSION_SECRET=new_secret)
    r = f.fab("rotate-env", "--env-file", str(good))
    out = r.stdout + r.stderr
    assert new_password not in out and new_secret not in out, "rotate-env printed a secret value"
    assert "ADMIN_PASSWORD" in out and "ADMIN_SESSION_SECRET" in out  # the key diff names the keys
    assert f.stat(ENV_PATH) == f"root:{APP}:600" and f.sha(ENV_PATH) != before
    assert login(f, PASSWORD)[0] == 401
    assert f.https("/api/releases", "-H", f"cookie: {old_cookie}")[0] == 401
    guide_checks(f, "2.0.0")  # verify logs in with the new password, read on the host
    for rec in tmp_path.joinpath("runs").glob("*.json"):
        assert new_password not in rec.read_text(), f"{rec.name} holds a secret value"

    # -- rollback: back to v1 with the env it ran with (ARCHITECTURE "Env per release")
    f.fab("rollback")
    assert f.current_release(APP) == v1 and served_version(f) == "1.0.0"
    guide_checks(f, "1.0.0")
    assert login(f, PASSWORD)[0] == 200  # the env v1 ran with: the sample's password again
    assert f.release_log(APP)[-1].get("action") == "rollback"
    assert any("action=rollback" in ln for ln in f.audit(APP))

    # -- verify: the whole promised state, read-only
    r = f.fab("verify")
    assert f.host_result("verify")["result"] in ("ok", "passed"), r.stdout
    for check in GUIDE_CHECKS:
        assert check in r.stdout, f"verify did not run the inventory's check {check}:\n{r.stdout}"
