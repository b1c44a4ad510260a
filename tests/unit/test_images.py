"""tasks.sandbox.images: sample rootfs, image config/manifest/digest consistency, the
static server's behaviour, docker-load archives, and a real push to a loopback
docker-registry when that binary is installed."""
import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tasks.sandbox import images
from tasks.core.errors import FabshipError

pytestmark = pytest.mark.skipif(not shutil.which("gcc"), reason="gcc not installed (needed for the static server)")
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, method="GET", headers=None):
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with _opener.open(req, timeout=5) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def wait_port(port, proc):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"exited {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.03)
    pytest.fail(f"nothing listening on {port}")


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory):
    return images.build_rootfs("docker-service", "1.2.3", out_dir=tmp_path_factory.mktemp("r") / "rootfs")


def test_rootfs_layout(rootfs, tmp_path):
    server = rootfs / "app" / "server"
    assert server.stat().st_mode & 0o111
    assert server.read_bytes()[:4] == b"\x7fELF"
    assert b"/lib64/ld-linux" not in server.read_bytes()[:4096]  # static: no interpreter
    assert (rootfs / "VERSION").read_text() == "1.2.3\n"
    assert not (rootfs / "app" / "BROKEN").exists()
    assert (rootfs / "tmp").stat().st_mode & 0o7777 == 0o1777
    broken = images.build_rootfs("docker-service", "1.2.3", broken=True, out_dir=tmp_path / "b")
    assert (broken / "app" / "BROKEN").exists()


def test_manifest_config_and_layer_digests_are_consistent(rootfs):
    config = images.sample_config("docker-service", "1.2.3")
    img = images.build_image(rootfs, config)
    manifest = json.loads(img.manifest)
    assert manifest["schemaVersion"] == 2 and manifest["mediaType"] == images.MT_MANIFEST
    assert manifest["config"] == {"mediaType": images.MT_CONFIG, "size": len(img.config),
                                  "digest": sha(img.config)}
    assert manifest["layers"] == [{"mediaType": images.MT_LAYER, "size": len(img.layer),
                                   "digest": sha(img.layer)}]
    assert img.manifest_digest == sha(img.manifest)
    raw = gzip.decompress(img.layer)
    cfg = json.loads(img.config)
    assert cfg["architecture"] == "amd64" and cfg["os"] == "linux"
    assert cfg["rootfs"] == {"type": "layers", "diff_ids": [sha(raw)]} and img.diff_id == sha(raw)
    c = cfg["config"]
    assert c["Entrypoint"] == ["/app/server"] and c["Cmd"] == ["service"]
    assert c["ExposedPorts"] == {"8080/tcp": {}} and c["WorkingDir"] == "/app"
    assert any(e.startswith("PATH=") for e in c["Env"])
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert members["app/server"].mode & 0o777 == 0o755 and members["app/server"].uid == 0
        assert tar.extractfile("VERSION").read() == b"1.2.3\n"
    # deterministic: rebuilding gives the same digests (re-pushes are no-ops)
    assert images.build_image(rootfs, config).manifest_digest == img.manifest_digest


def test_image_from_tarball_matches_directory(rootfs, tmp_path):
    img = images.build_image(rootfs, {"Cmd": ["x"]})
    raw = gzip.decompress(img.layer)
    (tmp_path / "r.tar").write_bytes(raw)
    (tmp_path / "r.tar.gz").write_bytes(img.layer)
    assert images.build_image(tmp_path / "r.tar", {"Cmd": ["x"]}).diff_id == img.diff_id
    assert images.build_image(tmp_path / "r.tar.gz", {"Cmd": ["x"]}).layer_digest == img.layer_digest
    (tmp_path / "junk").write_bytes(b"not a tar")
    with pytest.raises(FabshipError, match="not a tar"):
        images.build_image(tmp_path / "junk", {})
    with pytest.raises(FabshipError, match="does not exist"):
        images.build_image(tmp_path / "missing", {})


def test_unknown_app_and_unreachable_registry_are_one_line_errors(rootfs):
    with pytest.raises(FabshipError, match="unknown sample app"):
        images.build_rootfs("nope", "1.0.0")
    with pytest.raises(FabshipError, match="unreachable"):
        images.push_image(f"127.0.0.1:{free_port()}", "fabship/x", "1", rootfs, {})


def test_docker_archive_layout(rootfs, tmp_path):
    config = images.sample_config("docker-service", "1.2.3")
    path = images.save_docker_archive(tmp_path / "a.tar", "reg:5000/fabship/docker-service:1.2.3", rootfs, config)
    img = images.build_image(rootfs, config)
    with tarfile.open(path) as tar:
        (entry,) = json.loads(tar.extractfile("manifest.json").read())
        assert entry["RepoTags"] == ["reg:5000/fabship/docker-service:1.2.3"]
        assert tar.extractfile(entry["Config"]).read() == img.config
        assert sha(tar.extractfile(entry["Layers"][0]).read()) == img.diff_id


def _serve(rootfs, mode, port, **env):
    e = {"PATH": os.environ.get("PATH", ""), "APP_ROOT": str(rootfs), "SERVER_PORT": str(port), **env}
    p = subprocess.Popen([str(rootfs / "app" / "server"), mode], env=e, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd=rootfs)
    wait_port(port, p)
    return p


def _stop(p):
    p.send_signal(signal.SIGTERM)
    try:
        out, _ = p.communicate(timeout=2)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        pytest.fail("server ignored SIGTERM")
    return p.returncode, out


def test_static_server_service_mode(rootfs, tmp_path):
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "db-password").write_text("s3cr3t-LEAKCHECK")
    port = free_port()
    p = _serve(rootfs, "service", port, SECRETS_DIR=str(tmp_path / "secrets"), CERTS_DIR=str(tmp_path / "none"),
               SPRING_DATASOURCE_URL="jdbc:postgresql://db/x-LEAKCHECK")
    try:
        st, _, body = get(f"http://127.0.0.1:{port}/actuator/health")
        assert (st, json.loads(body)) == (200, {"status": "UP"})
        st, _, body = get(f"http://127.0.0.1:{port}/actuator/info")
        info = json.loads(body)
        assert info["app"]["version"] == "1.2.3"
        assert info["secrets"] == "present" and info["secretFiles"] == 1 and info["certs"] == "absent"
        assert b"LEAKCHECK" not in body
    finally:
        code, out = _stop(p)
    assert code == 0 and "LEAKCHECK" not in out
    assert sum("/actuator/" in line for line in out.splitlines()) == 2
    p = _serve(rootfs, "service", port, FAIL_HEALTH="1")
    try:
        st, _, body = get(f"http://127.0.0.1:{port}/actuator/health")
        assert (st, json.loads(body)) == (503, {"status": "DOWN"})
    finally:
        _stop(p)


def test_static_server_broken_image_and_fail_start(tmp_path):
    broken = images.build_rootfs("docker-service", "1.0.1", broken=True, out_dir=tmp_path / "b")
    port = free_port()
    p = _serve(broken, "service", port)
    try:
        assert get(f"http://127.0.0.1:{port}/actuator/health")[0] == 503
    finally:
        _stop(p)
    r = subprocess.run([str(broken / "app" / "server"), "service"], env={"FAIL_START": "1", "SERVER_PORT": str(port)},
                       capture_output=True, text=True, timeout=5)
    assert r.returncode == 1 and "FAIL_START" in r.stderr


def test_static_server_api_reports_db(tmp_path):
    root = images.build_rootfs("compose-api", "3.0.0", out_dir=tmp_path / "api")
    db_port, api_port = free_port(), free_port()
    db = _serve(root, "db", db_port)
    api = _serve(root, "api", api_port, DB_HOST="localhost", DB_PORT=str(db_port))
    try:
        st, _, body = get(f"http://127.0.0.1:{api_port}/api/v1/health")
        assert st == 200 and '"db":"UP"' in body.decode() and json.loads(body)["status"] == "UP"
        assert json.loads(get(f"http://127.0.0.1:{api_port}/api/v1/version")[2]) == {"version": "3.0.0"}
        # the image's healthcheck command
        r = subprocess.run([str(root / "app" / "server"), "check", "/api/v1/health", str(api_port)],
                           capture_output=True, timeout=5)
        assert r.returncode == 0
        _stop(db)
        st, _, body = get(f"http://127.0.0.1:{api_port}/api/v1/health")
        assert st == 503 and json.loads(body) == {"status": "DOWN", "db": "DOWN", "version": "3.0.0"}
        r = subprocess.run([str(root / "app" / "server"), "check", "/api/v1/health", str(api_port)],
                           capture_output=True, timeout=5)
        assert r.returncode == 1
    finally:
        if db.poll() is None:
            _stop(db)
        _stop(api)


@pytest.fixture
def registry(tmp_path):
    binary = shutil.which("docker-registry")
    if not binary:
        pytest.skip("docker-registry not installed")
    port = free_port()
    cfg = tmp_path / "registry.yml"
    cfg.write_text(f"version: 0.1\nlog: {{level: error}}\nstorage:\n  filesystem: {{rootdirectory: {tmp_path}/data}}\n"
                   f"http: {{addr: 127.0.0.1:{port}}}\n")
    p = subprocess.Popen([binary, "serve", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_port(port, p)
        yield f"127.0.0.1:{port}"
    finally:
        p.terminate()
        p.wait(timeout=10)


def test_push_to_real_registry(registry, rootfs):
    config = images.sample_config("docker-service", "1.2.3")
    digest = images.push_image(registry, "fabship/docker-service", "1.2.3", rootfs, config)
    img = images.build_image(rootfs, config)
    assert digest == img.manifest_digest
    base = f"http://{registry}/v2/fabship/docker-service"
    st, h, body = get(f"{base}/manifests/1.2.3", headers={"Accept": images.MT_MANIFEST})
    assert st == 200 and h["Docker-Content-Digest"] == digest and sha(body) == digest
    assert get(f"{base}/blobs/{img.layer_digest}")[2] == img.layer
    assert get(f"{base}/blobs/{img.config_digest}")[2] == img.config
    # second push: blobs already there, same digest
    assert images.push_image(registry, "fabship/docker-service", "1.2.3", rootfs, config) == digest
    assert json.loads(get(f"{base}/tags/list")[2])["tags"] == ["1.2.3"]
