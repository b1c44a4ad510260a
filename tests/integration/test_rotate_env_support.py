"""Helpers and fixtures for the rotate-env integration tests (no tests here).

The app under test is apps/node-app, installed on h6 as `rotdemo` with the
release layout of ARCHITECTURE.md and a systemd unit reading the env file
(strategy restart, no nginx), so rotate-env runs its real restart/health path.
Its /health answers 503 when FAIL_HEALTH=1 is in the env: the failure path.
"""
from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile
import textwrap
from pathlib import Path

import pytest
import yaml
from fab_cli import run_fab

REPO = Path(__file__).resolve().parents[2]
HOST = "h6"
APP = "rotdemo"
PORT = 3160
RID = "20250101T000000Z-v1"
ENV_PATH = f"/etc/{APP}/{APP}.env"
GOOD_SECRET = "initial-secret-0123456789abcdef"

UNIT = textwrap.dedent(f"""\
    [Unit]
    Description=rotate-env test app (fabship)
    After=network-online.target

    [Service]
    User={APP}
    Group={APP}
    WorkingDirectory=/opt/{APP}/current
    EnvironmentFile=/etc/{APP}/{APP}.env
    ExecStart=/usr/bin/env PORT={PORT} /usr/bin/node src/server.js
    Restart=on-failure
    RestartSec=1

    [Install]
    WantedBy=multi-user.target
    """)


def host_run(fleet, cmd: str, stdin: bytes | None = None, timeout: float = 300) -> tuple[int, str, str]:
    """Run a command on h6 as root over a separate strict SSH connection."""
    client = fleet.connect(HOST)
    try:
        chan = client.get_transport().open_session()
        chan.settimeout(timeout)
        chan.exec_command(cmd)
        if stdin is not None:
            chan.sendall(stdin)
        chan.shutdown_write()
        out = io.BytesIO()
        err = io.BytesIO()
        while True:
            if chan.recv_ready():
                out.write(chan.recv(65536))
            elif chan.recv_stderr_ready():
                err.write(chan.recv_stderr(65536))
            elif chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                break
            else:
                chan.status_event.wait(0.05)
        code = chan.recv_exit_status()
        return code, out.getvalue().decode(errors="replace"), err.getvalue().decode(errors="replace")
    finally:
        client.close()


def must(fleet, cmd: str, stdin: bytes | None = None) -> str:
    code, out, err = host_run(fleet, cmd, stdin)
    assert code == 0, f"{cmd!r} failed ({code}): {err or out}"
    return out


def app_tarball() -> bytes:
    buf = io.BytesIO()
    src = REPO / "apps" / "node-app"
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in ("package.json", "src"):
            tar.add(str(src / name), arcname=name)
    return buf.getvalue()


def install_app(fleet, env_text: str) -> None:
    """The layout bootstrap+deploy make (ARCHITECTURE.md), set up directly."""
    must(fleet, "command -v node >/dev/null || { apt-get update -q >/dev/null && "
                "DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs >/dev/null; }")
    must(fleet, f"""set -e
        systemctl stop {APP}.service 2>/dev/null || true
        rm -rf /opt/{APP} /etc/{APP}
        id -u {APP} >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin {APP}
        install -d -m 0755 -o root -g {APP} /opt/{APP} /opt/{APP}/releases
        install -d -m 0750 -o {APP} -g {APP} /opt/{APP}/releases/{RID}
        install -d -m 0750 -o root -g {APP} /etc/{APP}
        ln -sfn releases/{RID} /opt/{APP}/current
    """)
    must(fleet, f"tar -xzf - -C /opt/{APP}/releases/{RID} && chown -R {APP}:{APP} /opt/{APP}/releases/{RID}",
         app_tarball())
    must(fleet, f"umask 077; cat > {ENV_PATH} && chown root:{APP} {ENV_PATH} && chmod 0600 {ENV_PATH}",
         env_text.encode())
    must(fleet, f"cat > /etc/systemd/system/{APP}.service && systemctl daemon-reload && "
                f"systemctl enable --now {APP}.service >/dev/null 2>&1", UNIT.encode())
    wait_healthy(fleet)


def wait_healthy(fleet, tries: int = 40) -> None:
    must(fleet, f"for i in $(seq {tries}); do curl -fsS http://127.0.0.1:{PORT}/health >/dev/null 2>&1 "
                f"&& exit 0; sleep 0.25; done; exit 1")


def health_status(fleet) -> str:
    return host_run(fleet, f"curl -s -o /dev/null -w '%{{http_code}}' http://127.0.0.1:{PORT}/health")[1]


def main_pid(fleet) -> str:
    return must(fleet, f"systemctl show -p MainPID --value {APP}.service").strip()


def file_sha(fleet, path: str = ENV_PATH) -> str:
    return must(fleet, f"sha256sum < {path} | cut -d' ' -f1").strip()


def stat(fleet, path: str = ENV_PATH) -> str:
    return must(fleet, f"stat -c %U:%G:%a {path}").strip()


def write_inventory(tmp_path: Path, env_extra: dict | None = None, name: str = "rot") -> Path:
    env = {
        "keep_previous": 3,
        "contract": {
            "required": ["APP_SECRET"],
            "optional": ["FAIL_HEALTH", "LOG_LEVEL", "DB_URL", "API_TOKEN"],
            "rules": {"APP_SECRET": {"min_length": 16}, "LOG_LEVEL": {"one_of": ["debug", "info"]},
                      "DB_URL": {"url": True}},
        },
    }
    env.update(env_extra or {})
    inv = {
        "include": [str(REPO / "inventories" / "sandbox.yaml")],
        "app": {"name": APP, "kind": "node", "port": PORT},
        "deploy": {"source": "artifact", "artifact": str(REPO / "apps" / "node-app"), "strategy": "restart"},
        "nginx": {"enabled": False},
        "health": {"path": "/health", "port": PORT, "retries": 8, "interval": 0.5, "timeout": 2},
        "env": env,
    }
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(inv, sort_keys=False))
    return p


def fab(tmp_path: Path, *args, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return run_fab(*args, runs_dir=tmp_path / "runs", env=env, timeout=timeout)


def rotate(tmp_path, inv: Path, *args, env: dict | None = None) -> subprocess.CompletedProcess:
    return fab(tmp_path, "rotate-env", "-i", str(inv), "--limit", HOST, *args, env=env)


def env_file(tmp_path: Path, text: str, name: str = "new.env") -> Path:
    p = tmp_path / name
    p.write_text(text)
    p.chmod(0o600)
    return p


@pytest.fixture
def rot_app(sandbox_fleet, tmp_path):
    """h6 running rotdemo with a known good env file; yields the fleet."""
    if HOST not in [h.name for h in sandbox_fleet.hosts]:
        pytest.skip(f"the sandbox fleet has no {HOST}")
    install_app(sandbox_fleet, f"APP_SECRET={GOOD_SECRET}\nLOG_LEVEL=info\n")
    yield sandbox_fleet


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
