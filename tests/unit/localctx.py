"""A HostContext stand-in that runs the *real* host scripts with the local
`sh` (paths pointed into a temp dir by the inventory): the deploy/lock/health
scripts are tested as they run on hosts, without a host."""
from __future__ import annotations

import subprocess
import threading
from types import SimpleNamespace

from tasks.core.commands import Cmd, Secret
from tasks.core.errors import StepFailed
from tasks.core.runner import RemoteResult

from .fakectx import FakeCtx


class LocalCtx(FakeCtx):
    """The shared fake context (tests/unit/fakectx.py) whose commands run in the
    local `sh`; apply()/change() are the runner's own (tasks/core/step.py)."""

    def __init__(self, inv, name="local", dry_run=False, task="test"):
        super().__init__(inv, name=name, address="127.0.0.1", user="root", dry_run=dry_run, task=task)
        self.run_ = SimpleNamespace(task=task, cancel=threading.Event(), dry_run=dry_run)

    def run(self, cmd, *, stdin=None, check=True, timeout=None, stream=None, root=True, what=""):
        text = cmd.render() if isinstance(cmd, Cmd) else str(cmd)
        self.commands.append(text)
        if isinstance(stdin, Secret):
            stdin = stdin.reveal()
        if isinstance(stdin, str):
            stdin = stdin.encode()
        p = subprocess.run(["sh", "-c", text], input=stdin or b"", capture_output=True, timeout=timeout or 120)
        res = RemoteResult(text, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace"), p.returncode)
        if check and not res.ok:
            raise StepFailed(f"{what or text[:80]} failed (exit {res.exited})", res.tail())
        return res


def load_inv(tmp_path, extra: dict | None = None, name="app"):
    """An inventory whose app root lives in tmp_path (no hosts are contacted)."""
    import yaml

    from tasks.config.inventory import load_inventory

    data = {
        "hosts": {"static": {"h1": "10.255.255.1", "h2": "10.255.255.2", "h3": "10.255.255.3",
                             "h4": "10.255.255.4", "h5": "10.255.255.5"}},
        "app": {"name": "demo", "kind": "node", "root": str(tmp_path / "opt"), "port": 3000, "start": "npm start",
                "config_dir": str(tmp_path / "etc")},
        "deploy": {"source": "artifact", "artifact": str(tmp_path)},
        "nginx": {"enabled": True},
    }
    for k, v in (extra or {}).items():
        if isinstance(v, dict) and isinstance(data.get(k), dict):
            data[k].update(v)
        elif v is None:
            data.pop(k, None)
        else:
            data[k] = v
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(data))
    return load_inventory(str(p))
