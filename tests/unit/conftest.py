import contextlib
import io
import os
import subprocess as _subprocess
import sys
import traceback
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fab(tmp_path, monkeypatch):
    """Run `fab ARGS` from the repo root, with runs recorded in tmp: fabric's own
    program (argument parsing, task loading from fabfile.py, exit codes, what
    reaches stdout and stderr) in this process, which saves a Python start per
    call. `subprocess=True` runs the real `python -m fabric` instead; the
    integration tier always does."""

    def run(*args, env=None, cwd=None, timeout=120, subprocess=False):
        e = dict(os.environ)
        e["FABSHIP_RUNS_DIR"] = str(tmp_path / "runs")
        e.pop("FABSHIP_INVENTORY", None)
        e.update(env or {})
        if subprocess:
            return _subprocess.run([sys.executable, "-m", "fabric", *args], cwd=cwd or REPO, env=e,
                                   capture_output=True, text=True, timeout=timeout)
        return _fab_in_process(list(args), e, cwd or REPO, monkeypatch)

    return run


def _fab_in_process(args: list, env: dict, cwd, monkeypatch) -> _subprocess.CompletedProcess:
    from fabric.main import make_program

    with monkeypatch.context() as m:
        for k in set(os.environ) - set(env):
            m.delenv(k)
        for k, v in env.items():
            m.setenv(k, v)
        m.chdir(cwd)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                make_program().run(["fab", *args], exit=True)
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException:  # what `python -m fabric` would die of: traceback, exit 1
                traceback.print_exc()
                code = 1
    return _subprocess.CompletedProcess(["fab", *args], code, out.getvalue(), err.getvalue())


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
