"""The sample apps fabship deploys (apps/): endpoints, failure switches, SIGTERM,
and that secrets never reach the logs. Each app runs from a copy in tmp_path on
a free loopback port, so tests don't touch the repo or each other."""
import base64
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

APPS = Path(__file__).resolve().parents[2] / "apps"
NODE = shutil.which("node")
NPM = shutil.which("npm")
needs_node = pytest.mark.skipif(not NODE, reason="node not installed")
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(port, path, method="GET", body=None, headers=None):
    """(status, headers, text) without raising on 4xx/5xx."""
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                 headers=headers or {})
    try:
        with _opener.open(req, timeout=5) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


class App:
    def __init__(self, argv, cwd, env):
        self.port = free_port()
        e = {k: v for k, v in os.environ.items() if not k.startswith(("FAIL_", "APP_", "MODEL_"))}
        e.update({"PORT": str(self.port)}, **env)
        self.proc = subprocess.Popen(argv, cwd=cwd, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)

    def wait_ready(self):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out, err = self.proc.communicate()
                pytest.fail(f"app exited {self.proc.returncode}: {err or out}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.03)
        pytest.fail("app did not listen within 10s")

    def get(self, path, **kw):
        return http(self.port, path, **kw)

    def stop(self):
        """SIGTERM; returns (exit code, seconds taken, stdout, stderr)."""
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, err = self.proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        return self.proc.returncode, time.monotonic() - t0, out, err


@pytest.fixture
def run_app():
    started = []

    def start(argv, cwd, env=None, ready=True):
        app = App(argv, cwd, env or {})
        started.append(app)
        return app.wait_ready() if ready else app

    yield start
    for app in started:
        if app.proc.poll() is None:
            app.proc.kill()
            app.proc.wait()


def copy_app(name, dest: Path) -> Path:
    dst = dest / name
    shutil.copytree(APPS / name, dst, ignore=shutil.ignore_patterns(
        "node_modules", "dist", ".next", "__pycache__", "venv", "FAIL_*"))
    return dst


def exited(argv, cwd, env):
    e = {k: v for k, v in os.environ.items() if not k.startswith(("FAIL_", "APP_", "MODEL_"))}
    e.update(env)
    return subprocess.run(argv, cwd=cwd, env=e, capture_output=True, text=True, timeout=10)


# ---------------------------------------------------------------- node-app


@pytest.fixture(scope="module")
def node_app(tmp_path_factory):
    if not NODE:
        pytest.skip("node not installed")
    d = copy_app("node-app", tmp_path_factory.mktemp("node"))
    r = subprocess.run([NODE, "scripts/build.js"], cwd=d, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return d


@needs_node
def test_node_app_build_writes_dist_and_build_info(node_app):
    pkg = json.loads((node_app / "package.json").read_text())
    assert pkg["scripts"]["start"] == "node dist/server.js"
    assert "dist/server.js" not in pkg["scripts"]["build"]  # a real build step, not a no-op
    info = json.loads((node_app / "dist" / "build-info.json").read_text())
    assert info["version"] == pkg["version"]
    src = (node_app / "src" / "server.js").read_text()
    assert info["sourceSha256"] == hashlib.sha256(src.encode()).hexdigest()
    assert (node_app / "dist" / "server.js").read_text().endswith(src)


@needs_node
def test_node_app_fail_build_switch(tmp_path):
    d = copy_app("node-app", tmp_path)
    (d / "FAIL_BUILD").touch()
    r = subprocess.run([NODE, "scripts/build.js"], cwd=d, capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "FAIL_BUILD" in r.stderr
    assert not (d / "dist" / "server.js").exists()


@pytest.mark.skipif(not NPM, reason="npm not installed")
@pytest.mark.parametrize("name", ["node-app", "ota-server"])
def test_npm_ci_offline_with_committed_lockfile(tmp_path, name):
    d = copy_app(name, tmp_path)
    lock = json.loads((d / "package-lock.json").read_text())
    assert lock["lockfileVersion"] == 3
    assert set(lock["packages"]) == {""}  # zero dependencies: hosts have no npm registry
    pkg = json.loads((d / "package.json").read_text())
    assert not pkg.get("dependencies") and not pkg.get("devDependencies")
    r = subprocess.run([NPM, "ci", "--offline", "--no-audit", "--no-fund"], cwd=d, capture_output=True,
                       text=True, timeout=60, env={**os.environ, "npm_config_cache": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr


@needs_node
def test_node_app_endpoints_logging_and_sigterm(node_app, run_app):
    app = run_app([NODE, "dist/server.js"], node_app)
    st, h, body = app.get("/health")
    assert st == 200 and json.loads(body) == {"status": "ok", "version": "1.0.0"}
    assert h["content-type"].startswith("application/json")
    st, h, body = app.get("/version")
    assert (st, body.strip()) == (200, "1.0.0") and h["content-type"].startswith("text/plain")
    st, _, body = app.get("/")
    assert st == 200 and "1.0.0" in body and "fabship node-app" in body
    assert app.get("/nope")[0] == 404
    code, took, out, _ = app.stop()
    assert code == 0 and took < 1.0
    assert "0.0.0.0" in out  # binds all interfaces by default
    assert sum(" /health " in line for line in out.splitlines()) == 1
    assert sum(" /version " in line for line in out.splitlines()) == 1


@needs_node
def test_node_app_version_precedence(tmp_path, run_app):
    d = copy_app("node-app", tmp_path)
    subprocess.run([NODE, "scripts/build.js"], cwd=d, check=True, capture_output=True)
    (d / "VERSION").write_text("2.3.4\n")
    app = run_app([NODE, "dist/server.js"], d)
    assert app.get("/version")[2].strip() == "2.3.4"  # VERSION file beats package.json
    app = run_app([NODE, "dist/server.js"], d, {"APP_VERSION": "9.9.9"})
    assert app.get("/version")[2].strip() == "9.9.9"  # env beats both


@needs_node
def test_node_app_fail_health_file_and_env(node_app, tmp_path, run_app):
    app = run_app([NODE, "dist/server.js"], node_app)
    assert app.get("/health")[0] == 200
    (node_app / "FAIL_HEALTH").touch()  # read per request: flips a running release
    try:
        assert app.get("/health")[0] == 503
        assert app.get("/")[0] == 200 and app.get("/version")[0] == 200
    finally:
        (node_app / "FAIL_HEALTH").unlink()
    assert app.get("/health")[0] == 200
    app2 = run_app([NODE, "dist/server.js"], node_app, {"FAIL_HEALTH": "1"})
    assert app2.get("/health")[0] == 503


@needs_node
def test_node_app_fail_start(node_app):
    r = exited([NODE, "dist/server.js"], node_app, {"FAIL_START": "1", "PORT": str(free_port())})
    assert r.returncode == 1 and "FAIL_START" in r.stderr
    (node_app / "FAIL_START").touch()
    try:
        r = exited([NODE, "dist/server.js"], node_app, {"PORT": str(free_port())})
    finally:
        (node_app / "FAIL_START").unlink()
    assert r.returncode == 1 and "FAIL_START" in r.stderr


@needs_node
def test_node_app_short_app_secret_fails_health_without_leaking(node_app, run_app):
    short = "tiny-s3cr3t"
    app = run_app([NODE, "dist/server.js"], node_app, {"APP_SECRET": short})
    st, _, body = app.get("/health")
    assert st == 503 and json.loads(body)["reason"] == "APP_SECRET too short" and short not in body
    code, _, out, err = app.stop()
    assert short not in out + err
    good = "a-long-enough-secret-value-42"
    app = run_app([NODE, "dist/server.js"], node_app, {"APP_SECRET": good})
    assert app.get("/health")[0] == 200
    _, _, out, err = app.stop()
    assert good not in out + err


# ---------------------------------------------------------------- ota-server

OTA_ENV = {
    "HOST": "0.0.0.0", "NODE_ENV": "production", "BLOB_STORAGE_TYPE": "s3", "DB_TYPE": "supabase",
    "S3_REGION": "eu-west-1", "S3_BUCKET_NAME": "ota", "SUPABASE_URL": "http://supabase.invalid",
    "SUPABASE_API_KEY": "supa-key-LEAKCHECK-1", "ADMIN_PASSWORD": "admin-pw-LEAKCHECK-2",
    "ADMIN_SESSION_SECRET": "ab" * 32, "ADMIN_SESSION_MAX_AGE_SECONDS": "600",
    "UPLOAD_KEY": "upload-LEAKCHECK-3", "PRIVATE_KEY_BASE_64": base64.b64encode(b"LEAKCHECK-4 key").decode(),
    "S3_ENDPOINT": "",
}
MANIFEST_HEADERS = {"expo-protocol-version": "1", "expo-platform": "ios", "expo-runtime-version": "1.0.0"}


@pytest.fixture(scope="module")
def ota_app(tmp_path_factory):
    if not NODE:
        pytest.skip("node not installed")
    d = copy_app("ota-server", tmp_path_factory.mktemp("ota"))
    r = subprocess.run([NODE, "scripts/build.js"], cwd=d, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert (d / ".next" / "BUILD_ID").read_text().strip()
    return d


@needs_node
def test_ota_missing_or_invalid_env_exits_naming_key_not_values(ota_app):
    env = {k: v for k, v in OTA_ENV.items() if k != "UPLOAD_KEY"}
    r = exited([NODE, "server.js"], ota_app, {**env, "PORT": str(free_port())})
    assert r.returncode == 1 and "UPLOAD_KEY" in r.stderr
    assert "LEAKCHECK" not in r.stdout + r.stderr
    r = exited([NODE, "server.js"], ota_app, {**OTA_ENV, "ADMIN_SESSION_SECRET": "ab" * 31, "PORT": str(free_port())})
    assert r.returncode == 1 and "ADMIN_SESSION_SECRET" in r.stderr and "ab" * 31 not in r.stderr
    # optional keys may be absent
    env = {k: v for k, v in OTA_ENV.items() if k != "S3_ENDPOINT"}
    r = exited([NODE, "server.js"], ota_app, {**env, "PORT": str(free_port()), "FAIL_START": "1"})
    assert r.returncode == 1 and "FAIL_START" in r.stderr


@needs_node
def test_ota_requires_a_build(tmp_path):
    d = copy_app("ota-server", tmp_path)
    r = exited([NODE, "server.js"], d, {**OTA_ENV, "PORT": str(free_port())})
    assert r.returncode == 1 and "npm run build" in r.stderr


@needs_node
def test_ota_health_version_manifest(ota_app, run_app):
    app = run_app([NODE, "server.js"], ota_app, OTA_ENV)
    st, _, body = app.get("/api/health")
    assert (st, json.loads(body)) == (200, {"status": "ok"})
    st, _, body = app.get("/api/version")
    assert st == 200 and json.loads(body)["version"] == "1.0.0"
    st, h, body = app.get("/api/manifest", headers=MANIFEST_HEADERS)
    assert st == 200 and h["expo-protocol-version"] == "1"
    m = json.loads(body)
    assert m["runtimeVersion"] == "1.0.0" and m["assets"] == [] and m["id"] and m["createdAt"]
    assert m["launchAsset"]["url"] and m["launchAsset"]["hash"]
    st, _, asset = app.get(m["launchAsset"]["url"].split(str(app.port), 1)[1])
    assert st == 200 and asset
    for drop in MANIFEST_HEADERS:
        hdrs = {k: v for k, v in MANIFEST_HEADERS.items() if k != drop}
        assert app.get("/api/manifest", headers=hdrs)[0] == 400, drop
    assert app.get("/api/manifest", headers={**MANIFEST_HEADERS, "expo-platform": "web"})[0] == 400
    assert app.get("/api/manifest", headers={**MANIFEST_HEADERS, "expo-protocol-version": "7"})[0] == 400
    code, took, out, err = app.stop()
    assert code == 0 and took < 1.0
    assert "LEAKCHECK" not in out + err and OTA_ENV["ADMIN_SESSION_SECRET"] not in out + err


@needs_node
def test_ota_login_session_cookie_flow(ota_app, run_app):
    app = run_app([NODE, "server.js"], ota_app, OTA_ENV)
    assert app.get("/api/releases")[0] == 401
    st, h, _ = app.get("/api/login", method="POST", body={"password": "wrong-password"},
                       headers={"content-type": "application/json"})
    assert st == 401 and not h.get("set-cookie")
    st, h, _ = app.get("/api/login", method="POST", body={"password": OTA_ENV["ADMIN_PASSWORD"]},
                       headers={"content-type": "application/json"})
    assert st == 200
    cookie = h["set-cookie"]
    attrs = [a.strip() for a in cookie.split(";")]
    assert "HttpOnly" in attrs and "Path=/" in attrs and "Max-Age=600" in attrs
    token = attrs[0].split("=", 1)[1]
    payload, sig = token.split(".")
    key = OTA_ENV["ADMIN_SESSION_SECRET"].encode()
    assert sig == hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()
    st, _, body = app.get("/api/releases", headers={"cookie": f"session={token}"})
    assert st == 200 and isinstance(json.loads(body)["releases"], list) and json.loads(body)["releases"]
    # tampered payload or signature: rejected
    forged = base64.urlsafe_b64encode(b'{"sub":"admin","exp":9999999999}').decode().rstrip("=")
    assert app.get("/api/releases", headers={"cookie": f"session={forged}.{sig}"})[0] == 401
    assert app.get("/api/releases", headers={"cookie": f"session={payload}.{'0' * 64}"})[0] == 401
    # a correctly signed but expired session: rejected
    expired = base64.urlsafe_b64encode(b'{"sub":"admin","exp":1}').decode().rstrip("=")
    esig = hmac.new(key, expired.encode(), hashlib.sha256).hexdigest()
    assert app.get("/api/releases", headers={"cookie": f"session={expired}.{esig}"})[0] == 401
    _, _, out, err = app.stop()
    assert "LEAKCHECK" not in out + err and token not in out + err


@needs_node
def test_ota_fail_health_file(ota_app, run_app):
    (ota_app / "FAIL_HEALTH").touch()
    try:
        app = run_app([NODE, "server.js"], ota_app, OTA_ENV)
        assert app.get("/api/health")[0] == 503
        assert app.get("/api/version")[0] == 200
    finally:
        (ota_app / "FAIL_HEALTH").unlink()


# ---------------------------------------------------------------- model-server


@pytest.fixture
def model_dir(tmp_path):
    return copy_app("model-server", tmp_path)


def test_model_server_endpoints_and_sigterm(model_dir, run_app):
    app = run_app([sys.executable, "app.py"], model_dir)
    st, _, body = app.get("/health")
    assert st == 200 and json.loads(body) == {"status": "ok", "model": "loaded", "version": "1.0.0"}
    assert '"status": "ok"' in body  # the inventory's body_contains
    assert app.get("/version")[2].strip() == "1.0.0"
    st, _, body = app.get("/predict", method="POST", body={"inputs": [1, 2, -0.5]},
                          headers={"content-type": "application/json"})
    assert st == 200 and json.loads(body)["outputs"] == [2.5, 4.5, -0.5]
    for bad in ({"inputs": "x"}, {"nope": []}, {"inputs": [True]}):
        assert app.get("/predict", method="POST", body=bad)[0] == 422
    code, took, out, _ = app.stop()
    assert code == 0 and took < 1.0
    assert "0.0.0.0" in out and sum("/predict" in line for line in out.splitlines()) == 4


def test_model_server_api_key(model_dir, run_app):
    key = "model-key-LEAKCHECK-" + "x" * 20
    app = run_app([sys.executable, "app.py"], model_dir, {"MODEL_API_KEY": key})
    body = {"inputs": [1, 2]}
    assert app.get("/predict", method="POST", body=body)[0] == 401
    assert app.get("/predict", method="POST", body=body, headers={"x-api-key": "wrong"})[0] == 401
    st, _, out = app.get("/predict", method="POST", body=body, headers={"x-api-key": key})
    assert st == 200 and json.loads(out)["outputs"] == [2.5, 4.5]
    assert app.get("/health")[0] == 200  # health needs no key
    _, _, out, err = app.stop()
    assert "LEAKCHECK" not in out + err


def test_model_server_failure_switches(model_dir, run_app):
    (model_dir / "FAIL_HEALTH").touch()
    app = run_app([sys.executable, "app.py"], model_dir)
    assert app.get("/health")[0] == 503 and app.get("/version")[0] == 200
    (model_dir / "FAIL_HEALTH").unlink()
    assert app.get("/health")[0] == 200
    r = exited([sys.executable, "app.py"], model_dir, {"FAIL_START": "1", "PORT": str(free_port())})
    assert r.returncode == 1 and "FAIL_START" in r.stderr
    (model_dir / "FAIL_START").touch()
    r = exited([sys.executable, "app.py"], model_dir, {"PORT": str(free_port())})
    assert r.returncode == 1 and "FAIL_START" in r.stderr


def test_model_server_requirements_have_no_dependencies():
    lines = (APPS / "model-server" / "requirements.txt").read_text().splitlines()
    assert [ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")] == []
