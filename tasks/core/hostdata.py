"""What one host's steps hand each other during a run (`ctx.data`), declared.

A step that records something for a later step or for the closing summary
(the release state it read, whether traffic was switched, the lock it holds)
sets a field here. Declared fields instead of free string keys: a misspelt
name fails at once (AttributeError) instead of reading as "not set".

Item access (`ctx.data["switched"]`, `.get`, `.setdefault`, `.update`, `.pop`)
is the same as attribute access, so the steps and the test doubles (which
pass a plain dict) share one spelling. None means "not set".
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass
class HostData:
    # the connection (tasks/core/runner.py)
    cloud_init_waited: bool = False   # `cloud-init status --wait` ran once (ssh.wait)
    # bootstrap (tasks/cli/bootstrap.py)
    request: Any = None         # the fact script's FactsRequest
    facts: Any = None           # its parsed Facts
    platform: Any = None        # the platform the facts matched (tasks/config/platforms.py)
    # deploy, rollback, rotate-env (tasks/cli/deploy.py, rollback.py; tasks/release/)
    state: Any = None           # the host's release state (tasks/facts/releases.py HostState)
    rid: str | None = None      # the release this run deploys
    previous: str | None = None  # the release that served before it (what a rollback returns to)
    target: str | None = None   # the release a rollback goes to
    switched: bool = False      # traffic moved to the new release (the fleet rollback undoes it)
    outcome: str | None = None  # for the closing summary: deployed, failed, rolled back, interrupted
    holder: Any = None          # the deploy lock this run took here (lock.acquire's holder)
    locked: bool = False
    lock_holder: Any = None     # the holder written into the lock (released on the way out)
    lock_refused: str | None = None  # who held the lock that made this host skip
    # called once, just before the first command of the run's first change (core/step.py apply):
    # bootstrap takes the deploy lock there, so its idempotent run stays one remote command
    before_change: Any = None
    # verify gate (tasks/verify/gate.py)
    testinfra_host: Any = None  # the testinfra backend over this host's connection
    gate_results: Any = None
    # fab exec (tasks/cli/app_exec.py)
    exit: int | None = None     # the command's exit status

    def _field(self, key: str) -> str:
        if key not in _NAMES:
            raise KeyError(f"HostData has no field {key!r} (declare it in tasks/core/hostdata.py)")
        return key

    def __getitem__(self, key: str):
        return getattr(self, self._field(key))

    def __setitem__(self, key: str, value) -> None:
        setattr(self, self._field(key), value)

    def __contains__(self, key: str) -> bool:
        return getattr(self, self._field(key)) is not None

    def get(self, key: str, default=None):
        value = getattr(self, self._field(key))
        return default if value is None else value

    def setdefault(self, key: str, value):
        if getattr(self, self._field(key)) is None:
            setattr(self, key, value)
        return getattr(self, key)

    def update(self, values: dict | None = None, **kw) -> None:
        for k, v in {**(values or {}), **kw}.items():
            self[k] = v

    def pop(self, key: str, default=None):
        value = self.get(key, default)
        setattr(self, key, _DEFAULTS[key])
        return value


_NAMES = frozenset(f.name for f in fields(HostData))
_DEFAULTS = {f.name: f.default for f in fields(HostData)}
