import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fab(tmp_path):
    """Run `fab` as a user would, from the repo root, with runs recorded in tmp."""

    def run(*args, env=None, cwd=None, timeout=120):
        e = dict(os.environ)
        e["FABSHIP_RUNS_DIR"] = str(tmp_path / "runs")
        e.pop("FABSHIP_INVENTORY", None)
        e.update(env or {})
        return subprocess.run([sys.executable, "-m", "fabric", *args], cwd=cwd or REPO, env=e,
                              capture_output=True, text=True, timeout=timeout)

    return run


@pytest.fixture(scope="session")
def moto_server():
    """moto's real HTTP server (EC2, Secrets Manager, SSM, ELBv2) on loopback."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    """No real AWS credentials or config can leak into a test."""
    for k in list(os.environ):
        if k.startswith("AWS_"):
            monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-creds"))
    return {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
