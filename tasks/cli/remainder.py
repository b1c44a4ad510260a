"""The command after `--` for `fab exec -- CMD` (tasks/cli/app_exec.py).

invoke keeps it as the parser's remainder, and fabric's executor would run a
remainder as its own command on `-H` hosts (failing without them):
`RemainderExecutor` takes it for `fab exec` instead, for `fab` (installed on
fabric's program when the fabfile loads: `install_executor`) and `fabship`.
A module of its own because every `fab` start loads it: it imports nothing of
fabship's (start-up, issue 17; `fab exec`'s own module loads the command layer)."""
from __future__ import annotations

import shlex
import sys

from fabric.executor import Executor as _FabricExecutor
from invoke import Executor as _InvokeExecutor

_REMAINDER: dict = {"text": "", "argv": None}


def remainder_from(text: str, argv: list[str]) -> str:
    """The command after `--`: one word is shell text as typed (`fab exec -- 'a | b'`);
    several are quoted word by word (`fab exec -- ls -l "my dir"`), as ssh never does."""
    if "--" in argv:
        words = argv[argv.index("--") + 1:]
        if words and " ".join(words) == text:
            return words[0] if len(words) == 1 else shlex.join(words)
    return text


class RemainderExecutor(_FabricExecutor):
    """fabric's Executor, except that the text after `--` is kept for `fab exec`
    instead of becoming an anonymous command on -H hosts; invoke's own call
    expansion under the `fabship` program (which has no -H)."""

    def __init__(self, collection, config=None, core=None):
        super().__init__(collection, config, core)
        if core is not None and getattr(core, "remainder", ""):
            _REMAINDER["text"] = remainder_from(core.remainder, list(sys.argv))
            core.remainder = ""

    def expand_calls(self, calls, apply_hosts=True):
        if self.core is None or "hosts" not in self.core[0].args:
            return _InvokeExecutor.expand_calls(self, calls)
        return super().expand_calls(calls, apply_hosts)


def install_executor() -> None:
    """`fab`'s program object (fabric.main.program) runs tasks with RemainderExecutor."""
    mod = sys.modules.get("fabric.main")
    prog = getattr(mod, "program", None)
    if prog is not None and getattr(prog, "executor_class", None) is _FabricExecutor:
        prog.executor_class = RemainderExecutor


def remainder() -> str:
    return _REMAINDER["text"]
