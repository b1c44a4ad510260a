"""Every `fab` command the README and docs/ show names a real task and real
options: the docs are what a new user follows, so they must not drift."""
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
COMMAND = re.compile(r"(?:^|&& |; |`)(fab [a-z][a-z.-]*[^`&;|#\n]*)", re.M)


def doc_commands() -> list[tuple[str, str]]:
    found = set()
    for doc in DOCS:
        for m in COMMAND.finditer(doc.read_text()):
            found.add((doc.name, " ".join(m.group(1).split())))
    return sorted(found)


def test_the_docs_show_fab_commands():
    tasks = {cmd.split()[1] for _, cmd in doc_commands()}
    assert {"bootstrap", "deploy", "rollback", "rotate-env", "verify", "hosts", "sandbox.up"} <= tasks


@pytest.fixture(scope="module")
def help_of():
    """`fab --help TASK` per task, from fabric's program (cached per module)."""
    import contextlib
    import io
    import os

    from fabric.main import make_program

    cache: dict[str, str] = {}

    def get(task: str) -> str:
        if task not in cache:
            out = io.StringIO()
            cwd = os.getcwd()
            os.chdir(REPO)
            try:
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
                    try:
                        make_program().run(["fab", "--help", task], exit=True)
                    except SystemExit as e:
                        assert not e.code, f"`fab --help {task}`: no such task"
            finally:
                os.chdir(cwd)
            cache[task] = out.getvalue()
        return cache[task]

    return get


@pytest.mark.parametrize("doc, cmd", doc_commands())
def test_documented_command_uses_real_options(doc, cmd, help_of):
    words = cmd.split()
    task = words[1]
    if task.startswith("-"):  # fab --help TASK, fab --list
        return
    text = help_of(task)
    for w in words[2:]:
        for opt in re.findall(r"--(?:\[no-\])?([a-z][a-z-]*)", w):
            base = opt[3:] if opt.startswith("no-") else opt  # --no-gate is --[no-]gate
            assert re.search(rf"--(\[no-\])?({opt}|{base})\b", text), \
                f"{doc}: `{cmd}`: `fab {task}` has no --{opt}"


def test_documented_inventories_exist():
    placeholders = {"INV", "prod", "NAME", "X"}  # written as examples, not files of this repo
    for doc, cmd in doc_commands():
        for name in re.findall(r"(?:-i|--inventory)[ =](\S+)", cmd):
            if name not in placeholders:
                assert (REPO / "inventories" / f"{name}.yaml").exists(), f"{doc}: `{cmd}`: no inventories/{name}.yaml"
