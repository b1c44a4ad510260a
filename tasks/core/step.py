"""The one step protocol (issue 12): a step describes its change as a
`Change` value and calls `ctx.apply(step, change)`, which owns the rest:

- dry-run: the step is recorded "would change" (`dry_message`, else
  `message`), the diff and a `would run:` line per command are printed, and
  nothing runs. A read-only probe (`dry_run=RUN`) runs in dry-run too; a
  write that is no step of its own (a log line, a snapshot: `dry_run=SKIP`)
  is left out of a dry run without a word;
- otherwise: the commands run in order (timed, `stdin` on each), a non-zero
  exit fails the step (`exits[code]`, else `failed`, else the runner's own
  "STEP failed (exit N)"), with the masked tail of the output as details;
- the record: `outcome(result)` turns the last command's RemoteResult into
  the step's record(s) (`Record` values: changed, ok, skipped, failed, also
  under another step name such as "swap (activate)"); without one the step
  is recorded changed with `message`.

No step code branches on dry-run: what differs between the two runs is
described here (`dry_message`, `diff`, `shown`, `dry_run`). `apply` only
needs the context's public interface (dry_run, host.user, run, record, fail,
say, mask), so the test doubles use this very implementation (`Steps`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from .commands import Cmd, become
from .errors import StepFailed

if TYPE_CHECKING:
    from .runner import RemoteResult

OK, CHANGED, SKIPPED, FAILED = "ok", "changed", "skipped", "failed"

# What a dry run does with a Change.
SHOW = "show"  # record "would change", print the diff and the would-run lines; run nothing
RUN = "run"    # a read-only probe: it runs in dry-run too (its outcome records)
SKIP = "skip"  # a write that is no step of its own (log line, snapshot): nothing at all in dry-run

# The failure message of a non-zero exit when `exits` names other codes only.
DEFAULT_FAILED = "{message}: failed (exit {exit})"


@dataclass(frozen=True)
class Record:
    """One record an outcome gives: status, message, and the step's name when
    it is not the change's own (None). A FAILED record fails the step
    (ctx.fail, with `details`) after the records before it, unless not `fatal`."""
    status: str
    message: str = ""
    step: str | None = None
    details: str = ""
    fatal: bool = True   # False: a FAILED record only (a hook after the switch: the run goes on)


@dataclass(frozen=True)
class Failure:
    """How a non-zero exit fails the step: `message` is recorded (and raised as
    "STEP: message"); `details` default to the masked tail of the output;
    `raised`, when set, is the exception's message instead (a caller's
    contract that words it otherwise)."""
    message: str
    details: str | None = None
    raised: str | None = None


@dataclass(frozen=True)
class Change:
    """What a step changes (see the module doc).

    message      the change, as recorded ("would change" in dry-run, "changed" after it ran)
    commands     Cmd values run in order, each with `stdin`; or a callable that makes them when the
                 change runs (not in dry-run): what it runs depends on an upload it makes first
                 (SFTP is no command), a read, or it is an API call of its own (it returns no commands)
    diff         shown in dry-run (a str, or a callable computed only then)
    timeout      each command's limit (None: ssh.command_timeout)
    exits        exit code -> failure (a message, "{exit}" replaced; a Failure; or a callable of the result)
    failed       the failure of any other non-zero exit (default, when `exits` is given: DEFAULT_FAILED)
    tail         lines of output shown as the failure's details
    outcome      RemoteResult -> the step's records (default: changed, `message`)
    check        False: every exit goes to `outcome` (health checks, hooks: the caller judges)
    dry_run      SHOW, RUN (a read-only probe) or SKIP (no step of its own); or a Change: the
                 read-only probe a dry run applies instead (it runs in dry-run; `lock`: who holds it)
    dry_message  the dry-run record's message when it is not `message` (a str, or a callable)
    dry_status   the dry-run record's status (a health check not made is "ok")
    shown        what the would-run lines name when not `commands` (the command inside a retry
                 wrapper; () names none)
    what         the commands' label in timeouts and "still running" (default: the step's name)
    stream       stream the output (as ctx.run's stream)
    announce     said before the commands run (a dry run's would-run lines say it already)
    """
    message: str = ""
    commands: Any = ()
    stdin: Any = None
    diff: Any = ""
    timeout: float | None = None
    exits: Mapping[int, Any] = field(default_factory=dict)
    failed: Any = None
    tail: int = 20
    outcome: Callable[["RemoteResult"], Iterable[Record]] | None = None
    check: bool = True
    dry_run: Any = SHOW
    dry_message: Any = None
    dry_status: str = CHANGED
    shown: tuple | None = None
    what: str = ""
    stream: bool | None = None
    announce: str = ""

    def __post_init__(self):
        if callable(self.commands):
            if self.shown is None:
                object.__setattr__(self, "shown", ())   # made only when the change runs
        else:
            object.__setattr__(self, "commands", _cmds(self.commands))
        if self.shown is not None:
            object.__setattr__(self, "shown", _cmds(self.shown))
        if not isinstance(self.dry_run, Change) and self.dry_run not in (SHOW, RUN, SKIP):
            raise ValueError(f"Change.dry_run: {self.dry_run!r}")
        if isinstance(self.dry_run, Change) and self.dry_run.dry_run != RUN:
            raise ValueError("Change.dry_run: the change a dry run applies instead is a probe (dry_run=RUN)")


def _cmds(cmds) -> tuple:
    out = tuple(c for c in cmds if c is not None)
    for c in out:
        if not isinstance(c, Cmd):
            raise TypeError(f"Change.commands holds Cmd values, not {type(c).__name__}")
    return out


@dataclass
class Applied:
    """What ctx.apply did: the records it wrote (Record values, step names
    filled in; `steps`: what ctx.record returned), the last command's result
    (None when none ran), whether the change ran (False: a dry run showed
    or skipped it) and how long it took."""
    records: list = field(default_factory=list)
    result: Any = None
    steps: list = field(default_factory=list)
    ran: bool = False
    duration: float = 0.0

    @property
    def changed(self) -> bool:
        return any(r.status == CHANGED for r in self.records)

    @property
    def stdout(self) -> str:
        return self.result.stdout if self.result is not None else ""


def short(text: str, n: int = 200) -> str:
    one = " ".join(text.split())
    return one if len(one) <= n else one[: n - 3] + "..."


def would_run_line(cmd: Cmd, login_user: str) -> str:
    return f"  would run: {short(become(cmd, login_user).render(), 300)}"


def apply(ctx, step: str, ch: Change) -> Applied:
    """The one implementation of a step's change (HostContext.apply)."""
    if ctx.dry_run and isinstance(ch.dry_run, Change):
        return apply(ctx, step, ch.dry_run)
    t0 = time.monotonic()
    done = Applied()
    if ctx.dry_run and ch.dry_run != RUN:
        if ch.dry_run == SKIP:
            return done
        msg = ch.dry_message if ch.dry_message is not None else ch.message
        msg = msg() if callable(msg) else msg
        _write(ctx, done, Record(ch.dry_status, msg, step), t0)
        diff = ch.diff() if callable(ch.diff) else ch.diff
        if diff:
            ctx.say(diff.rstrip("\n"))
        for c in (ch.commands if ch.shown is None else ch.shown):
            ctx.say(would_run_line(c, ctx.host.user))
        return done
    data = getattr(ctx, "data", None)   # a bare test double may have no per-host data
    hook = data.get("before_change") if data is not None else None
    if hook is not None:
        ctx.data["before_change"] = None   # once: the hook's own change (the lock) must not call it again
        hook()
    mapped = bool(ch.exits) or ch.failed is not None
    done.ran = True
    if ch.announce:
        ctx.say(ch.announce)
    for c in (_cmds(ch.commands()) if callable(ch.commands) else ch.commands):
        try:
            res = ctx.run(c, stdin=ch.stdin, check=ch.check and not mapped, timeout=ch.timeout,
                          stream=ch.stream, what=ch.what or step)
        except StepFailed as e:
            # the runner's own failure (exit, timeout): the step's record says so, unless the
            # change is no step of its own
            if ch.dry_run != SKIP:
                _write(ctx, done, Record(FAILED, e.message, step), t0)
            raise
        done.result = res
        if ch.check and mapped and not res.ok:
            _fail(ctx, step, ch, res, t0)
    done.duration = time.monotonic() - t0
    if ch.outcome is not None:
        records = list(ch.outcome(done.result) or [])
    else:
        records = [Record(CHANGED, ch.message)] if ch.dry_run == SHOW else []
    for r in records:
        name = r.step or step
        if r.status == FAILED and r.fatal:
            done.records.append(Record(FAILED, r.message, name))
            ctx.fail(name, r.message, r.details)
        _write(ctx, done, Record(r.status, r.message, name), t0 if r.step is None else None)
    return done


def _write(ctx, done: Applied, r: Record, started) -> None:
    done.records.append(r)
    done.steps.append(ctx.record(r.step, r.status, r.message, started))


def _fail(ctx, step: str, ch: Change, res, t0: float):
    spec = ch.exits.get(res.exited, ch.failed)
    if spec is None:
        spec = DEFAULT_FAILED
    f = spec(res) if callable(spec) else spec
    if isinstance(f, str):
        f = Failure(f.replace("{exit}", str(res.exited)).replace("{message}", ch.message))
    details = f.details if f.details is not None else ctx.mask(res.tail(ch.tail))
    if f.raised is not None:
        ctx.record(step, FAILED, f.message, t0)
        raise StepFailed(f.raised, details)
    ctx.fail(step, f.message, details)


class Steps:
    """`apply` and `change` for anything with a context's interface: the
    HostContext, and the test doubles (one implementation)."""

    def apply(self, step: str, change: Change) -> Applied:
        return apply(self, step, change)

    def change(self, name: str, message: str, *cmds: Cmd, stdin=None, diff: str = "",
               timeout: float | None = None):
        """A Change of `cmds` (the runner's failure on a non-zero exit), applied."""
        done = self.apply(name, Change(message, cmds, stdin=stdin, diff=diff, timeout=timeout))
        return done.steps[-1] if done.steps else None
