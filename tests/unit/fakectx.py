"""The one fake HostContext for unit tests: HostContext's interface (run,
apply/change, record/ok/skipped/changed/fail, say/debug/mask, dry_run,
inv, host, facts, data, run_), without a connection.

`apply` and `change` are the runner's own (tasks/core/step.py `Steps`), so a
step tested here goes through the very dry-run / exit-mapping / record code a
real run does. Commands are answered by `answer` (see FakeCtx.respond): the
default answers every command with exit 0 and no output. LocalCtx
(tests/unit/localctx.py) is this with commands run by the local `sh`.
"""
from __future__ import annotations

import threading
from types import SimpleNamespace

from tasks.core.commands import Cmd, Raw, Secret, become, mask_text
from tasks.core.errors import StepFailed
from tasks.core.runner import RemoteResult
from tasks.core.step import Steps, short


def answer(exited: int = 0, stdout: str = "", stderr: str = "") -> tuple:
    return (exited, stdout, stderr)


class FakeCtx(Steps):
    """`answers`: a list of answers taken in order, or a dict whose keys are
    substrings of the rendered command (first match wins; "" matches all), or
    a callable (rendered command, stdin bytes) -> answer. An answer is a
    RemoteResult, an (exited, stdout, stderr) tuple, or a str (stdout, exit 0)."""

    def __init__(self, inv=None, *, name="web1", address="10.0.0.1", user="root", dry_run=False,
                 verbose=0, task="test", answers=None):
        self.inv = inv
        self.host = SimpleNamespace(name=name, address=address, user=user)
        self.dry_run = dry_run
        self.verbose = verbose
        self.answers = answers
        self.data, self.facts = {}, {}
        self.steps, self.said, self.commands, self.stdins, self.timeouts = [], [], [], [], []
        self.calls: list[dict] = []   # each run's keyword arguments (check, stream, what, root)
        self.note = ""
        self.conn = None
        self.timed_out = None
        self.secrets: list[Secret] = []
        self.run_ = SimpleNamespace(task=task, cancel=threading.Event(), dry_run=dry_run, extra={})

    # -- running ---------------------------------------------------------------------------------
    def respond(self, text: str, stdin: bytes) -> RemoteResult:
        a = self.answers
        if callable(a):
            got = a(text, stdin)
        elif isinstance(a, list):
            got = a.pop(0) if a else answer()
        elif isinstance(a, dict):
            got = next((v for k, v in a.items() if k in text), answer())
        else:
            got = answer()
        if isinstance(got, RemoteResult):
            return got
        if isinstance(got, str):
            got = answer(0, got)
        return RemoteResult(text, got[1], got[2], got[0], timed_out=got[0] == 124)

    def run(self, cmd, *, stdin=None, check=True, timeout=None, stream=None, root=True, what=""):
        c = cmd if isinstance(cmd, Cmd) else Cmd(Raw(cmd))
        text = (become(c, self.host.user) if root else c).render()
        if isinstance(stdin, Secret):
            stdin = stdin.reveal()
        if isinstance(stdin, str):
            stdin = stdin.encode()
        self.commands.append(text)
        self.stdins.append(stdin)
        self.timeouts.append(timeout)
        self.calls.append({"check": check, "stream": stream, "what": what, "root": root})
        res = self.respond(text, stdin or b"")
        if check and not res.ok:
            raise StepFailed(f"{what or short(text, 120)} failed (exit {res.exited})", self.mask(res.tail()))
        return res

    def connect(self):
        return self.conn

    def close(self):
        pass

    # -- output and records ----------------------------------------------------------------------
    def mask(self, text):
        return mask_text(text, self.secrets)

    def say(self, text):
        self.said.append(text)

    def debug(self, text, level=1):
        if self.verbose >= level:
            self.say(text)

    def record(self, name, status, message="", started=None):
        rec = (name, status, self.mask(message))
        self.steps.append(rec)
        return rec

    def ok(self, name, message=""):
        return self.record(name, "ok", message)

    def skipped(self, name, why):
        return self.record(name, "skipped", why)

    def changed(self, name, message=""):
        return self.record(name, "changed", message)

    def explain_timeout(self, message, details=""):
        return message, details

    def fail(self, name, message, details=""):
        message, details = self.explain_timeout(message, details)
        self.record(name, "failed", message)
        raise StepFailed(f"{name}: {message}", details)

    @property
    def changed_count(self) -> int:
        return sum(1 for s in self.steps if s[1] == "changed")

    # -- what a test reads -----------------------------------------------------------------------
    @property
    def would_run(self) -> list[str]:
        """The dry run's `would run:` lines, without the prefix."""
        return [s[len("  would run: "):] for s in self.said if s.startswith("  would run: ")]
