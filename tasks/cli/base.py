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


def fabship_task(*, help: dict, iterable=("set",), incrementable=("verbose",), name=None, **kw):
    """@task with fabship's error boundary: a FabshipError (a user or
    environment problem) prints one line and exits non-zero; Ctrl-C and
    SIGTERM exit 130/143 after the task's own cleanup ran (finally blocks)."""

    def deco(fn):
        task_name = (name or fn.__name__).replace("_", "-")

        @functools.wraps(fn)
        def wrapper(c, *args, **kwargs):
            as_json = bool(kwargs.pop("json", False))
            with output.collecting(task_name) as col, \
                    (output.stdout_to_stderr() if as_json else contextlib.nullcontext()) as write:
                code, message = output.EXIT_FAILED, None  # an unexpected exception (a bug) stays 1
                try:
                    result = _guarded(fn, c, args, kwargs)
                    code = output.EXIT_OK
                    return result
                except Exit as e:
                    code, message = e.code, e.message or None
                    raise
                finally:
                    _conclude(col, code, message, write)

        # every task takes --json: the boundary handles it, the task body never sees it
        sig = inspect.signature(fn)
        if not {"json", "json_"} & set(sig.parameters):  # sandbox.status has its own
            wrapper.__signature__ = sig.replace(parameters=[
                *sig.parameters.values(),
                inspect.Parameter("json", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=False)])
        kwargs = dict(help={"json": HELP["json"], **help}, iterable=list(iterable),
                      incrementable=list(incrementable), **{"klass": FabshipTask, **kw})
        if name:
            kwargs["name"] = name
        return task(**kwargs)(wrapper)

    return deco


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


def _guarded(fn, c, args, kwargs):
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


def open_run(task_name: str, inventory, set=(), limit=None, parallel=10, dry_run=False, verbose=0,
             accept_new_host_keys=False, options: dict | None = None):
    """Load and validate the inventory, resolve hosts, and return a Run.
    Nothing connects until a step needs the host."""
    from ..config.inventory import load_inventory
    from ..core.runner import Run

    inv = load_inventory(inventory, overrides=list(set or ()))
    hosts = inv.resolve_hosts(limit)
    return Run(task_name, inv, hosts, parallel=parallel, dry_run=dry_run, verbose=verbose,
               accept_new_host_keys=accept_new_host_keys, options=options or {})


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
