"""What the fab tasks share: option help texts, the error boundary that turns
user errors into one clear line (no traceback), and opening a Run."""
from __future__ import annotations

import faulthandler
import contextlib
import copy
import functools
import inspect
import math
import os
import re
import signal
import sys
import threading
from dataclasses import dataclass, fields, replace

from invoke import Argument, Task, task
from invoke.exceptions import Exit

from ..core import output
from ..core.errors import ConfigError, FabshipError

# --parallel's default, measured (bench/scale_fleet.py, README "Speed at fleet scale"): an
# idempotent bootstrap of 100 endpoints took 3.21 / 2.99 / 3.24 / 3.39 s at 10 / 25 / 50 / 100
# hosts at once on 2 cores; past 25 the threads cost more CPU than the waits they overlap.
PARALLEL = 25

HELP = {
    "inventory": "inventory NAME (inventories/NAME.yaml) or PATH to a YAML file; "
                 "default: $FABSHIP_INVENTORY",
    "set": "override one inventory key for this run, e.g. --set ssh.port=2222 "
           "(repeatable; the value is YAML; highest merge layer)",
    "limit": "only these hosts or groups (comma-separated names or addresses)",
    "parallel": f"how many hosts to work on at once (default {PARALLEL})",
    "accept_new_host_keys": "trust on first use: record unknown host keys in the inventory's "
                            "known_hosts (a changed key is still refused)",
    "dry_run": "show per host what would change (diffs, commands, env key names); change nothing",
    "verbose": "more output, a repeatable flag (no value): -v shows every remote command and "
               "unchanged steps, -vv (or -v -v, --verbose --verbose) streams command output",
    "lock_wait": "if another run holds the deploy lock, wait up to SECONDS for it instead of failing",
    "gate": "run the verification checks at the end as a gate, where the inventory's verify.gate "
            "enables them (default); --no-gate skips them for this run",
    "json": "print one JSON document (format fabship.run, README 'JSON output') on stdout at the end; "
            "the human output goes to stderr",
}

# A run that seems stuck: `kill -USR1 PID` prints every thread's stack to stderr
# (which step, which remote command is being waited on) and the run goes on.
try:
    faulthandler.register(signal.SIGUSR1, all_threads=True)
except (AttributeError, ValueError, OSError):  # stderr is no real file (imported under a test runner)
    pass

COMMON = ("inventory", "set", "limit", "parallel", "accept_new_host_keys", "verbose")


@dataclass(frozen=True)
class RunOptions:
    """The options every run shares, declared once (here), parsed once (in the fab
    task's boundary: numbers checked, --lock-wait in seconds) and passed whole to the
    task's module and to open_run(). A task takes the subset it names in
    `fabship_task(options=...)`; the rest keep these defaults."""

    inventory: str | None = None
    set: tuple[str, ...] = ()
    limit: str | None = None
    parallel: int = PARALLEL
    accept_new_host_keys: bool = False
    verbose: int = 0
    dry_run: bool = False
    lock_wait: float | None = None
    gate: bool = True

    @classmethod
    def parse(cls, given: dict) -> "RunOptions":
        """From the command line's values (names as the fields); a bad number is one
        ConfigError naming the option (exit 2, before anything connects)."""
        v = {k: given[k] for k in given if k in _RUN_FIELDS and given[k] is not None}
        if "set" in v:
            v["set"] = tuple(v["set"])
        if "parallel" in v:
            v["parallel"] = whole(v["parallel"], "parallel", 1)
        if "verbose" in v:
            v["verbose"] = int(v["verbose"])
        lw = v.pop("lock_wait", None)
        if lw not in (None, ""):
            v["lock_wait"] = seconds(lw, "lock_wait")
        return cls(**v)

    def load(self, cli: dict | None = None):
        """The validated inventory these options name (--set is its highest layer)."""
        from ..config.inventory import load_inventory

        return load_inventory(self.inventory, overrides=list(self.set), cli=cli)

    def but(self, **changes) -> "RunOptions":
        return replace(self, **changes)


_RUN_FIELDS = tuple(f.name for f in fields(RunOptions))


def helps(*names: str, **extra: str) -> dict:
    out = {n: HELP[n] for n in names}
    out.update(extra)
    return out


class Count(int):
    """The kind of a counted flag (-v, -vv): an int that invoke's help does not
    print as `-v INT`, since a counted flag takes no value (`-v 1` is refused)."""


class BadNumber(str):
    """A value given to an INT option that is no whole number: kept as given,
    so the task refuses it in one line (exit 2) instead of invoke's int() traceback."""


class _Arg(Argument):
    """invoke's parser deep-copies every task's arguments (several times per
    start: ~5 ms for fabship's ten tasks, most of `fab --list`'s own time).
    An Argument never changes its values in place (set_value assigns new
    ones), so a copy of its fields is as good; lists are copied anyway."""

    def __deepcopy__(self, memo):
        new = object.__new__(self.__class__)
        new.__dict__.update({k: (list(v) if isinstance(v, list) else v) for k, v in self.__dict__.items()})
        return new


class _LenientInt(_Arg):
    def set_value(self, value, cast=True):
        try:
            super().set_value(value, cast)
        except (TypeError, ValueError):
            self.raw_value, self._value = value, BadNumber(value)


# Options whose default is None but whose value is a whole number (help: INT).
INT_OPTIONS = ("parallel", "last", "lines")


class FabshipTask(Task):
    def __deepcopy__(self, memo):
        """invoke deep-copies every task of a namespace it loads (Collection's
        name transform): ~0.3 ms a task at every start. A task is not changed
        once made; its own lists and dicts are copied anyway."""
        new = object.__new__(self.__class__)
        new.__dict__.update({k: (copy.copy(v) if isinstance(v, (list, dict, set)) else v)
                             for k, v in self.__dict__.items()})
        return new

    def arg_opts(self, name, default, taken_names):
        opts = super().arg_opts(name, default, taken_names)
        if opts.get("incrementable"):
            opts["kind"] = Count
            opts["default"] = Count(opts.get("default") or 0)
        elif name in INT_OPTIONS and default is None:
            opts["kind"] = int
        return opts

    def get_arguments(self, *a, **kw):
        args = super().get_arguments(*a, **kw)
        for arg in args:  # same fields; only set_value / copying differ
            arg.__class__ = _LenientInt if arg.kind is int and not arg.incrementable else _Arg
        return args


# -- numeric options: checked before the task body runs, so before anything connects ---------

def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def whole(value, name: str, minimum: int = 1) -> int:
    try:
        n = int(str(value).strip())
    except ValueError:
        n = None
    if n is None or n < minimum:
        raise ConfigError("command line", _flag(name), f"expected a whole number of at least {minimum}, "
                                                       f"got {str(value)!r}")
    return n


def amount(value, name: str, minimum: int) -> str:
    """N hosts or N% of them (rolling batches, failure allowance)."""
    text = str(value).strip()
    m = re.fullmatch(r"(\d+)|(\d+(?:\.\d+)?)%", text)
    ok = bool(m) and (int(m.group(1)) >= minimum if m.group(1) else
                      (0 < float(m.group(2)) <= 100 if minimum else float(m.group(2)) <= 100))
    if not ok:
        least = "1 or more" if minimum else "0 or more"
        raise ConfigError("command line", _flag(name), f"expected a count of hosts ({least}) such as 2 or a "
                                                       f"percent such as 25%, got {text!r}")
    return text


def seconds(value, name: str) -> float:
    try:
        v = float(str(value).strip())
    except ValueError:
        v = -1.0
    if not (math.isfinite(v) and v >= 0):
        raise ConfigError("command line", _flag(name), f"expected a number of seconds (0 or more), got "
                                                       f"{str(value)!r}")
    return v


NUMBERS = {
    "parallel": lambda v, n: whole(v, n, 1),
    "last": lambda v, n: whole(v, n, 1),
    "batch": lambda v, n: amount(v, n, 1),
    "max_fail": lambda v, n: amount(v, n, 0),
    "lock_wait": seconds,
}


# Checked by their task itself, before it connects (its own wording): diagnose --lines.
SELF_CHECKED = ("lines",)


def check_numbers(kwargs: dict) -> None:
    """Every numeric option given on the command line is a valid number, or
    one ConfigError line naming the option (exit 2; nothing ran)."""
    for name, value in kwargs.items():
        if value is None or value == "" or isinstance(value, bool) or name in SELF_CHECKED:
            continue
        if name in NUMBERS:
            NUMBERS[name](value, name)
        elif isinstance(value, BadNumber):
            whole(value, name, 0)


def fabship_task(*, help: dict, options: tuple = (), iterable=("set",), incrementable=("verbose",), name=None,
                 **kw):
    """@task with fabship's error boundary: a FabshipError (a user or
    environment problem) prints one line and exits non-zero; Ctrl-C and
    SIGTERM exit 130/143 after the task's own cleanup ran (finally blocks).

    `options` names the RunOptions fields the task takes: the body declares one
    parameter `opts` in their place, and gets them parsed, as one RunOptions.
    Their help texts are HELP's."""

    def deco(fn):
        task_name = (name or fn.__name__).replace("_", "-")
        taken = tuple(n for n in _RUN_FIELDS if n in options)

        @functools.wraps(fn)
        def wrapper(c, *args, **kwargs):
            as_json = bool(kwargs.pop("json", False))
            with output.collecting(task_name) as col, \
                    (output.stdout_to_stderr() if as_json else contextlib.nullcontext()) as write:
                code, message = output.EXIT_FAILED, None  # an unexpected exception (a bug) stays 1
                try:
                    result = _guarded(fn, c, args, kwargs, taken)
                    code = output.EXIT_OK
                    return result
                except Exit as e:
                    code, message = e.code, e.message or None
                    raise
                finally:
                    _conclude(col, code, message, write)

        wrapper.__signature__ = _signature(fn, taken)
        kwargs = dict(help={"json": HELP["json"], **{n: HELP[n] for n in taken}, **help}, iterable=list(iterable),
                      incrementable=list(incrementable), **{"klass": FabshipTask, **kw})
        if name:
            kwargs["name"] = name
        return task(**kwargs)(wrapper)

    return deco


def _signature(fn, taken: tuple) -> inspect.Signature:
    """What invoke parses for the task: the body's parameters with `opts` spread
    into the RunOptions fields it takes (in RunOptions' order, which fixes their
    short flags: -i -s -l -p -a -v -d), and --json (the boundary's)."""
    sig = inspect.signature(fn)
    params = []
    for p in sig.parameters.values():
        if p.name != "opts":
            params.append(p)
            continue
        defaults = RunOptions()
        for n in taken:
            d = getattr(defaults, n)
            params.append(inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                            default=None if n == "set" else d))
    if taken and "opts" not in sig.parameters:
        raise TypeError(f"{fn.__name__}: options= needs a parameter `opts`")
    if not {"json", "json_"} & set(sig.parameters):  # sandbox.status has its own
        params.append(inspect.Parameter("json", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=False))
    return sig.replace(parameters=params)


def _conclude(col, code: int, message: str | None, write) -> None:
    """The last Run's record gets the task's final exit code and line (an
    interrupt or an error raised after finish()); with --json, the document
    goes to the real stdout. Never raises over the task's own outcome."""
    try:
        secrets = [s for r in col.runs for s in r.secrets]
        if col.runs:
            col.runs[-1].write_record(exit_code=code, message=message)
        if write is not None:
            write(output.dumps(output.document(col, code, message), secrets) + "\n")
    except Exception as e:  # a bug here must not hide the run's own result
        print(f"fabship: could not write the run's report: {type(e).__name__}: {e}", file=sys.stderr)


def _guarded(fn, c, args, kwargs, taken=()):
    """Run the task body inside fabship's error boundary."""
    old = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, _sigterm)
    except ValueError:  # not the main thread (tests calling tasks directly)
        old = None
    # threads alive before the task (a test's servers, an earlier task run in the same
    # process) are not this run's: their failures go to the previous hook
    before = set(threading.enumerate())
    old_hook = threading.excepthook
    threading.excepthook = functools.partial(_thread_failed, before=before, fallback=old_hook)
    try:
        check_numbers(kwargs)
        if taken:
            kwargs = dict(kwargs)
            kwargs["opts"] = RunOptions.parse({n: kwargs.pop(n) for n in taken if n in kwargs})
        return fn(c, *args, **kwargs)
    except FabshipError as e:
        raise Exit(f"fabship: {e}", code=e.exit_code) from None
    except KeyboardInterrupt:
        raise Exit("fabship: interrupted", code=130) from None
    except Terminated:
        raise Exit("fabship: terminated", code=143) from None
    finally:
        threading.excepthook = old_hook
        if old is not None:
            signal.signal(signal.SIGTERM, old)


def _thread_failed(args, before=frozenset(), fallback=None) -> None:
    """A library's own thread (paramiko, invoke's timeout timer) died: one line,
    not a traceback in the middle of the run's output. FABSHIP_DEBUG=1 shows it."""
    if args.exc_type is SystemExit:
        return
    if args.thread in before and fallback is not None:
        fallback(args)
        return
    if os.environ.get("FABSHIP_DEBUG"):
        threading.__excepthook__(args)
        return
    name = args.thread.name if args.thread is not None else "?"
    print(f"fabship: background thread {name} failed: {args.exc_type.__name__}: {args.exc_value} "
          "(FABSHIP_DEBUG=1 shows the traceback)", file=sys.stderr)


class Terminated(BaseException):
    """SIGTERM as an exception, so finally-blocks (lock release) run."""


def _sigterm(signum, frame):
    raise Terminated()


def open_run(task_name: str, opts: RunOptions, *, options: dict | None = None, inv=None, hosts=None):
    """The one way a task opens its Run: the inventory (loaded from `opts` unless the
    task already loaded and checked it), its hosts (`opts.limit`), and the run record's
    options (the task's own, plus limit and gate). Nothing connects until a step needs
    the host. (The read-only tasks take no --dry-run: their opts.dry_run is False.)"""
    from ..core.runner import Run

    inv = inv if inv is not None else opts.load()
    hosts = hosts if hosts is not None else inv.resolve_hosts(opts.limit)
    return Run(task_name, inv, hosts, parallel=opts.parallel, dry_run=opts.dry_run,
               verbose=opts.verbose, accept_new_host_keys=opts.accept_new_host_keys, options=options or {})


def finish(run, *, summary: bool = True) -> None:
    """Print the summary, write the run record, exit non-zero on any failure."""
    if summary:
        run.summary()
    code = run.finish()
    if code:
        failed = ", ".join(run.failed_hosts())
        raise Exit(f"fabship: {run.task} failed on: {failed}", code=code)


def not_available(name: str, issue: str):
    raise FabshipError(f"`fab {name}` is not available yet ({issue}); nothing was done")


def err(text: str) -> None:
    print(text, file=sys.stderr)
