"""What a run reports to machines: the exit code table, and the JSON document
that `--json` prints on stdout (and the run record shares).

The document (format `fabship.run`, version JSON_VERSION; README "JSON output"):
  {"format": "fabship.run", "version": 1, "task", "inventory", "inventory_files",
   "started", "duration", "dry_run", "exit_code", "result", "message",
   "hosts": {NAME: {"address", "result", "reason", "changed", "duration", "note", "error",
                    "release_before", "release_after", "steps": [{"name", "status",
                    "message", "duration", "dry_run"}], "failures": [...]}},
   "releases": {"before": {NAME: ID}, "after": {NAME: ID}},
   "failures": [{"host", "step", "reason", "message"}],
   "data": {...task specific...}, "extra": {...}}
The run record adds what is only for the operator's own machine: options, control_host,
user, and per host the remote commands and failure details.

Adding a key is compatible (version stays); renaming or removing one bumps JSON_VERSION.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import threading

JSON_FORMAT = "fabship.run"
JSON_VERSION = 1

# Exit codes CI can act on (README "Exit codes"): the most severe reason wins, in
# this order: interrupted > host failure > configuration error > lock held > unreachable.
EXIT_OK = 0
EXIT_FAILED = 1          # a host failed a step (or a check), or another run-time error
EXIT_CONFIG = 2          # inventory or command line invalid: nothing connected
EXIT_LOCKED = 3          # another run holds a host's deploy lock: nothing changed
EXIT_UNREACHABLE = 4     # host(s) unreachable or their host key refused, no other failure
EXIT_INTERRUPTED = 130   # Ctrl-C (SIGINT); cleanup ran
EXIT_TERMINATED = 143    # SIGTERM; cleanup ran

RESULTS = {EXIT_OK: "ok", EXIT_FAILED: "failed", EXIT_CONFIG: "config_error", EXIT_LOCKED: "lock_held",
           EXIT_UNREACHABLE: "unreachable", EXIT_INTERRUPTED: "interrupted", EXIT_TERMINATED: "interrupted"}

# A host's failure reason, in the document and for the exit code.
REASON_CODES = {"failed": EXIT_FAILED, "lock_held": EXIT_LOCKED, "unreachable": EXIT_UNREACHABLE,
                "interrupted": EXIT_INTERRUPTED}
_SEVERITY = ("interrupted", "failed", "lock_held", "unreachable")


def result_of(code: int) -> str:
    return RESULTS.get(code, "failed")


def exit_code_for(reasons) -> int:
    """The run's exit code from its failed hosts' reasons (0: none failed)."""
    reasons = set(reasons)
    for r in _SEVERITY:
        if r in reasons:
            return REASON_CODES[r]
    return EXIT_FAILED if reasons else EXIT_OK


class Collector:
    """The Runs one task invocation opened, and the data a task reports for its
    JSON document (`report(key, value)`)."""

    def __init__(self, task: str):
        self.task = task
        self.runs: list = []
        self.data: dict = {}


_stack: list[Collector] = []
_stack_lock = threading.Lock()


@contextlib.contextmanager
def collecting(task: str):
    c = Collector(task)
    with _stack_lock:
        _stack.append(c)
    try:
        yield c
    finally:
        with _stack_lock:
            _stack.remove(c)


def register_run(run) -> None:
    with _stack_lock:
        if _stack:
            _stack[-1].runs.append(run)


def report(key: str, value) -> None:
    """A task's own result for its JSON document (`data.KEY`), e.g. fab hosts' table."""
    with _stack_lock:
        if _stack:
            _stack[-1].data[key] = value


def document(col: Collector, exit_code: int, message: str | None) -> dict:
    """The JSON document for one task invocation: its (last) Run's document, or
    a bare one for tasks that open none (hosts, config), with the final code."""
    if col.runs:
        doc = col.runs[-1].document(exit_code=exit_code, message=message)
        if len(col.runs) > 1:  # provision --then-bootstrap: the earlier runs too
            doc["runs"] = [r.document() for r in col.runs[:-1]]
    else:
        doc = {"format": JSON_FORMAT, "version": JSON_VERSION, "task": col.task, "inventory": None,
               "inventory_files": [], "started": None, "duration": 0.0, "dry_run": False,
               "exit_code": exit_code, "result": result_of(exit_code), "message": message,
               "hosts": {}, "releases": {"before": {}, "after": {}}, "failures": [], "extra": {}}
    doc["data"] = col.data
    return doc


def dumps(doc: dict, secrets=()) -> str:
    from .commands import mask_text

    return mask_text(json.dumps(doc, indent=2, default=str), list(secrets))


@contextlib.contextmanager
def stdout_to_stderr():
    """Human output goes to stderr while the task runs (print(), tables, a
    subprocess writing to fd 1): stdout is kept for the JSON document. Yields a
    function that writes to the real stdout."""
    saved_py = sys.stdout
    saved_fd = fd = None
    try:
        fd, err_fd = saved_py.fileno(), sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a StringIO (tests): Python level only
        fd = err_fd = None
    if fd is not None:
        saved_py.flush()
        saved_fd = os.dup(fd)
        os.dup2(err_fd, fd)
    sys.stdout = sys.stderr

    def write(text: str) -> None:
        if saved_fd is not None:
            data = text.encode()
            while data:
                n = os.write(saved_fd, data)
                data = data[n:]
        else:
            saved_py.write(text)
            saved_py.flush()

    try:
        yield write
    finally:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        sys.stdout = saved_py
        if saved_fd is not None:
            os.dup2(saved_fd, fd)
            os.close(saved_fd)
