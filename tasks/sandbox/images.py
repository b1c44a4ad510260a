"""Build OCI/Docker images from a rootfs and push them to a registry, without dockerd.

The control machine has no Docker daemon, and the sandbox has no Docker Hub, so
the sample images are a single gzip layer made from a tiny rootfs (one static C
binary, apps/docker-service/server.c) plus a config JSON, pushed over the plain
HTTP Docker Registry v2 API with urllib. Stdlib only.

CLI:
    python -m tasks.sandbox.images push-samples --registry 10.231.0.1:5000 --tag 1.0.0 [--broken]
    python -m tasks.sandbox.images save-samples --out DIR --tag 1.0.0 [--registry R] [--broken]
    python -m tasks.sandbox.images build-rootfs --app docker-service --tag 1.0.0 [--broken]
    python -m tasks.sandbox.images push --registry R --repo NAME --tag T --rootfs DIR|TAR --cmd /bin/x [--port 8080] [--env K=V]
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import FabshipError

REPO_ROOT = Path(__file__).resolve().parents[2]
APPS_DIR = REPO_ROOT / "apps"
SERVER_SRC = APPS_DIR / "docker-service" / "server.c"
BUILD_DIR = APPS_DIR / ".build"  # gitignored

MT_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_CONFIG = "application/vnd.docker.container.image.v1+json"
MT_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
# Fixed timestamp: same inputs -> same digests (re-push is a no-op).
CREATED = "1970-01-01T00:00:00Z"
TIMEOUT = 60

# sample app -> (server mode, default port, health path, registry repo)
SAMPLES = {
    "docker-service": ("service", 8080, "/actuator/health", "fabship/docker-service"),
    "compose-api": ("api", 8080, "/api/v1/health", "fabship/compose-api"),
    "compose-client": ("client", 3000, "/health", "fabship/compose-client"),
    "compose-db": ("db", 5432, "/health", "fabship/compose-db"),
}


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- rootfs


def build_server_binary() -> Path:
    """Compile the static sample server once per source version (cached)."""
    src = SERVER_SRC.read_bytes()
    out = BUILD_DIR / "bin" / f"server-{hashlib.sha256(src).hexdigest()[:12]}"
    if out.exists():
        return out
    gcc = shutil.which("gcc")
    if not gcc:
        raise FabshipError("gcc not found: install gcc and libc6-dev (static libc) to build the sample images")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    proc = subprocess.run(
        [gcc, "-static", "-O2", "-s", "-o", str(tmp), str(SERVER_SRC)],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise FabshipError(f"compiling {SERVER_SRC.name} with gcc -static failed (is libc6-dev installed?): {last}")
    os.replace(tmp, out)  # atomic: concurrent builders never see a half-written binary
    return out


def build_rootfs(app: str, version: str, broken: bool = False, out_dir: Path | None = None) -> Path:
    """Assemble the rootfs directory of a sample image; returns its path.

    Layout: /app/server (static binary), /VERSION, /app/BROKEN if broken,
    /tmp (1777), /etc/passwd+group. Docker bind-mounts /etc/hosts etc. itself.
    """
    if app not in SAMPLES:
        raise FabshipError(f"unknown sample app {app!r}; expected one of: {', '.join(SAMPLES)}")
    if not version or "/" in version or version.strip() != version:
        raise FabshipError(f"invalid version {version!r}")
    binary = build_server_binary()
    name = f"{app}-{version}{'-broken' if broken else ''}"
    target = Path(out_dir) if out_dir else BUILD_DIR / "rootfs" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target, then swap in, so concurrent builds don't see partial trees.
    work = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target.parent))
    try:
        (work / "app").mkdir()
        shutil.copy2(binary, work / "app" / "server")
        (work / "app" / "server").chmod(0o755)
        (work / "VERSION").write_text(version + "\n")
        if broken:
            (work / "app" / "BROKEN").write_text("image built with --broken: health reports DOWN\n")
        (work / "etc").mkdir()
        (work / "etc" / "passwd").write_text("root:x:0:0:root:/root:/app/server\nnobody:x:65534:65534:nobody:/:/app/server\n")
        (work / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
        (work / "tmp").mkdir()
        (work / "tmp").chmod(0o1777)
        work.chmod(0o755)
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(work, target)
        except OSError:
            if not (target / "app" / "server").exists():
                raise
            shutil.rmtree(work, ignore_errors=True)  # another builder won; same content
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return target


def sample_config(app: str, version: str) -> dict:
    """Image config (the `config` section) for a sample app."""
    mode, port, health, _repo = SAMPLES[app]
    env = ["PATH=/app"]
    if mode in ("client", "db"):
        env.append(f"PORT={port}")  # so `server check` and the server agree on the port
    return {
        "Entrypoint": ["/app/server"],
        "Cmd": [mode],
        "Env": env,
        "ExposedPorts": {f"{port}/tcp": {}},
        "WorkingDir": "/app",
        "StopSignal": "SIGTERM",
        "Labels": {"org.opencontainers.image.version": version, "org.opencontainers.image.title": app},
        "Healthcheck": {
            "Test": ["CMD", "/app/server", "check", health],
            "Interval": 5_000_000_000,
            "Timeout": 3_000_000_000,
            "StartPeriod": 2_000_000_000,
            "Retries": 3,
        },
    }


# ---------------------------------------------------------------- image


@dataclass
class Image:
    layer: bytes  # gzip-compressed layer tar
    layer_digest: str
    diff_id: str  # sha256 of the uncompressed tar
    config: bytes
    config_digest: str
    manifest: bytes
    manifest_digest: str


def _tar_dir(root: Path) -> bytes:
    """Deterministic tar of a directory (sorted, root-owned, mtime 0)."""
    from ..release.sources import reproducible_tar

    return reproducible_tar(root, uname="root")


def _layer_from(rootfs: Path) -> tuple[bytes, bytes]:
    """(uncompressed tar, gzip tar) from a rootfs directory or tarball."""
    rootfs = Path(rootfs)
    if rootfs.is_dir():
        raw = _tar_dir(rootfs)
    elif rootfs.is_file():
        data = rootfs.read_bytes()
        if data[:2] == b"\x1f\x8b":
            try:
                return gzip.decompress(data), data
            except (OSError, EOFError) as e:
                raise FabshipError(f"{rootfs}: not a valid gzip tarball ({e})") from None
        raw = data
        try:
            tarfile.open(fileobj=io.BytesIO(raw)).getmembers()
        except tarfile.TarError as e:
            raise FabshipError(f"{rootfs}: not a tar archive ({e})") from None
    else:
        raise FabshipError(f"rootfs {rootfs} does not exist")
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as gz:
        gz.write(raw)
    return raw, out.getvalue()


def build_image(rootfs: Path, config: dict) -> Image:
    """Layer + config JSON + schema-2 manifest for a single-layer image."""
    raw, layer = _layer_from(rootfs)
    diff_id = _sha256(raw)
    cfg = {
        "architecture": "amd64",
        "os": "linux",
        "created": CREATED,
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": CREATED, "created_by": "fabship tasks.sandbox.images (rootfs layer)"}],
    }
    config_bytes = json.dumps(cfg, sort_keys=True, separators=(",", ":")).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "size": len(config_bytes), "digest": _sha256(config_bytes)},
        "layers": [{"mediaType": MT_LAYER, "size": len(layer), "digest": _sha256(layer)}],
    }
    manifest_bytes = json.dumps(manifest, indent=3).encode()
    return Image(layer, _sha256(layer), diff_id, config_bytes, _sha256(config_bytes),
                 manifest_bytes, _sha256(manifest_bytes))


# ---------------------------------------------------------------- registry


def _registry_base(registry: str) -> str:
    registry = registry.strip().rstrip("/")
    if not registry:
        raise FabshipError("registry address is empty")
    if "://" not in registry:
        registry = "http://" + registry  # the sandbox registries are plain HTTP
    return registry


# No proxies: registries are on private/loopback addresses.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _request(method: str, url: str, data: bytes | None = None, headers: dict | None = None):
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with _opener.open(req, timeout=TIMEOUT) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        host = urllib.parse.urlsplit(url).netloc
        raise FabshipError(f"registry {host} unreachable: {reason}") from None


def _fail(what: str, status: int, body: bytes) -> FabshipError:
    detail = body.decode("utf-8", "replace").strip().replace("\n", " ")[:200]
    return FabshipError(f"{what} failed: HTTP {status} {detail}".rstrip())


def _upload_blob(base: str, repo: str, digest: str, data: bytes) -> bool:
    """Upload one blob unless present. Returns True if uploaded."""
    status, _, _ = _request("HEAD", f"{base}/v2/{repo}/blobs/{digest}")
    if status == 200:
        return False
    status, headers, body = _request("POST", f"{base}/v2/{repo}/blobs/uploads/", data=b"",
                                     headers={"Content-Length": "0"})
    if status != 202 or not headers.get("Location"):
        raise _fail(f"starting blob upload to {repo}", status, body)
    location = urllib.parse.urljoin(base + "/", headers["Location"])
    sep = "&" if "?" in location else "?"
    url = f"{location}{sep}digest={urllib.parse.quote(digest)}"
    status, _, body = _request("PUT", url, data=data, headers={
        "Content-Type": "application/octet-stream", "Content-Length": str(len(data))})
    if status != 201:
        raise _fail(f"uploading blob {digest[:19]} to {repo}", status, body)
    return True


def push_image(registry: str, repo: str, tag: str, rootfs: Path, config: dict) -> str:
    """Build an image from `rootfs` and push it as registry/repo:tag. Returns the manifest digest."""
    base = _registry_base(registry)
    status, _, body = _request("GET", f"{base}/v2/")
    if status == 401:
        raise FabshipError(f"registry {registry} requires authentication, which fabship does not support")
    if status != 200:
        raise _fail(f"registry {registry} API check (GET /v2/)", status, body)
    img = build_image(rootfs, config)
    _upload_blob(base, repo, img.layer_digest, img.layer)
    _upload_blob(base, repo, img.config_digest, img.config)
    status, headers, body = _request("PUT", f"{base}/v2/{repo}/manifests/{tag}", data=img.manifest,
                                     headers={"Content-Type": MT_MANIFEST})
    if status != 201:
        raise _fail(f"pushing manifest {repo}:{tag}", status, body)
    returned = headers.get("Docker-Content-Digest")
    if returned and returned != img.manifest_digest:
        raise FabshipError(f"registry stored {repo}:{tag} as {returned}, expected {img.manifest_digest}")
    return img.manifest_digest


def save_docker_archive(path: Path, repo_tag: str, rootfs: Path, config: dict) -> Path:
    """Write a `docker load`-able tarball (for hosts without a registry)."""
    img = build_image(rootfs, config)
    raw = gzip.decompress(img.layer)
    layer_dir = img.diff_id.split(":", 1)[1]
    config_name = img.config_digest.split(":", 1)[1] + ".json"
    manifest = [{"Config": config_name, "RepoTags": [repo_tag], "Layers": [f"{layer_dir}/layer.tar"]}]
    name, _, tag = repo_tag.rpartition(":")
    files = {
        config_name: img.config,
        f"{layer_dir}/layer.tar": raw,
        f"{layer_dir}/VERSION": b"1.0",
        "manifest.json": json.dumps(manifest).encode(),
        "repositories": json.dumps({name: {tag: layer_dir}}).encode(),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tarfile.open(tmp, "w") as tar:
        info = tarfile.TarInfo(layer_dir)
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
        for fname, data in files.items():
            info = tarfile.TarInfo(fname)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    os.replace(tmp, path)
    return path


def push_samples(registry: str, tag: str, broken: bool = False, apps=None) -> dict[str, str]:
    """Build and push the sample images; returns {image ref: digest}."""
    out = {}
    for app in apps or SAMPLES:
        repo = SAMPLES[app][3]
        rootfs = build_rootfs(app, tag, broken)
        digest = push_image(registry, repo, tag, rootfs, sample_config(app, tag))
        out[f"{registry}/{repo}:{tag}"] = digest
    return out


# ---------------------------------------------------------------- CLI


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tasks.sandbox.images", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    ps = sub.add_parser("push-samples", help="build and push the sample images")
    ps.add_argument("--registry", required=True, help="host:port of a plain-HTTP v2 registry")
    ps.add_argument("--tag", required=True)
    ps.add_argument("--broken", action="store_true", help="images whose health check reports DOWN")
    ps.add_argument("--apps", help=f"comma list (default all: {','.join(SAMPLES)})")
    ss = sub.add_parser("save-samples", help="write docker-load tarballs of the sample images")
    ss.add_argument("--out", required=True)
    ss.add_argument("--tag", required=True)
    ss.add_argument("--registry", default="", help="name prefix for RepoTags (e.g. 10.231.0.1:5000)")
    ss.add_argument("--broken", action="store_true")
    br = sub.add_parser("build-rootfs", help="assemble a sample rootfs and print its path")
    br.add_argument("--app", required=True, choices=list(SAMPLES))
    br.add_argument("--tag", required=True)
    br.add_argument("--broken", action="store_true")
    pu = sub.add_parser("push", help="push an arbitrary rootfs (dir or tarball)")
    pu.add_argument("--registry", required=True)
    pu.add_argument("--repo", required=True)
    pu.add_argument("--tag", required=True)
    pu.add_argument("--rootfs", required=True)
    pu.add_argument("--cmd", nargs="+", required=True, help="Cmd argv")
    pu.add_argument("--entrypoint", nargs="+")
    pu.add_argument("--env", action="append", default=[], help="K=V (repeatable)")
    pu.add_argument("--port", action="append", default=[], help="exposed port (repeatable)")
    pu.add_argument("--workdir", default="/")
    args = p.parse_args(argv)

    try:
        if args.command == "push-samples":
            apps = args.apps.split(",") if args.apps else None
            for a in apps or []:
                if a not in SAMPLES:
                    raise FabshipError(f"unknown sample app {a!r}; expected one of: {', '.join(SAMPLES)}")
            for ref, digest in push_samples(args.registry, args.tag, args.broken, apps).items():
                print(f"pushed {ref} {digest}")
        elif args.command == "save-samples":
            prefix = args.registry.rstrip("/") + "/" if args.registry else ""
            for app, (_m, _p, _h, repo) in SAMPLES.items():
                rootfs = build_rootfs(app, args.tag, args.broken)
                dest = Path(args.out) / f"{app}-{args.tag}.tar"
                save_docker_archive(dest, f"{prefix}{repo}:{args.tag}", rootfs, sample_config(app, args.tag))
                print(f"saved {prefix}{repo}:{args.tag} -> {dest}")
        elif args.command == "build-rootfs":
            print(build_rootfs(args.app, args.tag, args.broken))
        elif args.command == "push":
            config = {
                "Cmd": args.cmd, "Env": args.env, "WorkingDir": args.workdir,
                "ExposedPorts": {(p if "/" in p else f"{p}/tcp"): {} for p in args.port},
            }
            if args.entrypoint:
                config["Entrypoint"] = args.entrypoint
            print(push_image(args.registry, args.repo, args.tag, Path(args.rootfs), config))
    except FabshipError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
