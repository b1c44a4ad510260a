"""A HostContext stand-in that runs the *real* host scripts with the local
`sh` (paths pointed into a temp dir by the inventory): the deploy/lock/health
scripts are tested as they run on hosts, without a host."""
from __future__ import annotations

import subprocess
import threading
from types import SimpleNamespace

from tasks.core.commands import Cmd, Secret, mask_text
from tasks.core.errors import StepFailed
from tasks.core.runner import RemoteResult


class LocalCtx:
    def __init__(self, inv, name="local", dry_run=False, task="test"):
        self.inv = inv
        self.host = SimpleNamespace(name=name, address="127.0.0.1", user="root")
        self.dry_run = dry_run
        self.verbose = 0
        self.data, self.facts = {}, {}
        self.steps, self.said, self.commands = [], [], []
        self.note = ""
        self.conn = None
        self.secrets: list[Secret] = []
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

    def mask(self, text):
        return mask_text(text, self.secrets)

    def say(self, text):
        self.said.append(text)

    def debug(self, text, level=1):
        pass

    def record(self, name, status, message="", started=None):
        self.steps.append((name, status, message))

    def ok(self, name, message=""):
        self.record(name, "ok", message)

    def skipped(self, name, why):
        self.record(name, "skipped", why)

    def changed(self, name, message=""):
        self.record(name, "changed", message)

    def change(self, name, message, *cmds, stdin=None, diff="", timeout=None):
        if self.dry_run:
            self.record(name, "changed", message)
            return
        for c in cmds:
            self.run(c, stdin=stdin, timeout=timeout, what=name)
        self.record(name, "changed", message)

    def fail(self, name, message, details=""):
        self.record(name, "failed", message)
        raise StepFailed(f"{name}: {message}", details)

    def connect(self):
        return None

    def close(self):
        pass


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
