"""The package's layers, as a test: imports only point down, and no module
imports another that (directly or through others) imports it back.

Layers, lowest first (docs/ARCHITECTURE.md explains each). A module may import
modules of its own layer or of a lower one; `if TYPE_CHECKING:` imports are
type hints only and do not count. Function-level imports count: hiding an
upward import inside a function still couples the layers.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "tasks"
LAYERS = ["core", "config", "facts", "resources", "verify", "release", "provision", "cli", "sandbox"]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.body:
                for n in ast.walk(sub):
                    if hasattr(n, "lineno"):
                        lines.add(n.lineno)
    return lines


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package modules `path` imports (resolved to dotted names under tasks)."""
    me = module_name(path)
    pkg = me.split(".") if path.name == "__init__.py" else me.split(".")[:-1]
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    out: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - (node.level - 1)] if node.level > 1 else pkg
                mod = ".".join([*base, *(node.module.split(".") if node.module else [])])
            elif node.module and (node.module == "tasks" or node.module.startswith("tasks.")):
                mod = node.module[len("tasks."):] if node.module != "tasks" else ""
            else:
                continue
            for a in node.names:  # `from .pkg import module` imports the module
                sub = f"{mod}.{a.name}" if mod else a.name
                targets.append(sub if sub in modules else mod)
        elif isinstance(node, ast.Import):
            targets = [a.name[len("tasks."):] for a in node.names if a.name.startswith("tasks.")]
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != me:
                out.add(t)
    return out


def layer_of(mod: str) -> int | None:
    head = mod.split(".")[0]
    return LAYERS.index(head) if head in LAYERS else None


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PKG.rglob("*.py")}
    mods = set(files)
    return {m: imports_of(p, mods) for m, p in files.items()}


def test_every_module_lives_in_a_layer():
    stray = sorted(m for m in graph() if m and layer_of(m) is None)
    assert not stray, f"modules outside the layer packages {LAYERS}: {stray}"


def test_imports_only_point_down():
    bad = []
    for mod, deps in sorted(graph().items()):
        mine = layer_of(mod)
        for d in sorted(deps):
            theirs = layer_of(d)
            if mine is not None and theirs is not None and theirs > mine:
                bad.append(f"{mod} ({LAYERS[mine]}) imports {d} ({LAYERS[theirs]})")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_product_never_imports_the_sandbox():
    bad = [f"{m} imports {d}" for m, deps in graph().items() if not m.startswith("sandbox")
           for d in deps if d.startswith("sandbox")]
    assert not bad, bad


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    WHITE, GREY, BLACK = 0, 1, 2
    color = dict.fromkeys(g, WHITE)
    stack: list[str] = []

    def visit(n):
        color[n] = GREY
        stack.append(n)
        for d in sorted(g.get(n, ())):
            if color.get(d) == GREY:
                return stack[stack.index(d):] + [d]
            if color.get(d) == WHITE:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        color[n] = BLACK
        return None

    for n in sorted(g):
        if color[n] == WHITE:
            found = visit(n)
            if found:
                return found
    return None


def test_no_import_cycles():
    g = {m: {d for d in deps if not m.startswith(d + ".") and d != ""} for m, deps in graph().items()}
    cycle = find_cycle(g)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("case, expect", [
    ({"cli.x": {"core.a"}, "core.a": set()}, None),
    ({"core.a": {"cli.x"}, "cli.x": {"core.a"}}, ["cli.x", "core.a", "cli.x"]),
])
def test_the_cycle_finder_finds_cycles(case, expect):
    assert find_cycle(case) == expect


def test_an_upward_import_is_caught(tmp_path):
    """The checker itself: a core module importing cli must be reported."""
    f = tmp_path / "probe.py"
    f.write_text("def f():\n    from ..cli.base import open_run\n")
    pkg_file = PKG / "core" / "_layer_probe.py"
    pkg_file.write_text(f.read_text())
    try:
        deps = imports_of(pkg_file, set(graph()))
        assert "cli.base" in deps
        assert layer_of("cli.base") > layer_of("core._layer_probe")
    finally:
        pkg_file.unlink()


def _product_modules():
    return [p for p in sorted(PKG.rglob("*.py")) if "sandbox" not in p.relative_to(PKG).parts]


def test_one_quoting_path():
    """Shell quoting happens in the command builder only (tasks/core/commands.py
    quote(): it also refuses a Secret on a command line); nowhere else calls shlex.quote."""
    offenders = []
    for path in _product_modules():
        if path == PKG / "core" / "commands.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "quote" and \
                    isinstance(node.value, ast.Name) and node.value.id == "shlex":
                offenders.append(f"{path.relative_to(PKG)}:{node.lineno}")
            if isinstance(node, ast.ImportFrom) and node.module == "shlex" and \
                    any(a.name == "quote" for a in node.names):
                offenders.append(f"{path.relative_to(PKG)}:{node.lineno}")
    assert not offenders, "shlex.quote outside tasks/core/commands.py: " + ", ".join(offenders)


def test_no_import_error_fallbacks_for_own_modules():
    """The package's own modules are always there: no `try: import ... except ImportError` around them."""
    offenders = []
    for path in _product_modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Try):
                continue
            caught = [h for h in node.handlers if isinstance(h.type, ast.Name) and
                      h.type.id in ("ImportError", "ModuleNotFoundError")]
            own = [n for n in node.body if isinstance(n, ast.ImportFrom) and (n.level or 0) > 0]
            if caught and own:
                offenders.append(f"{path.relative_to(PKG)}:{node.lineno}")
    assert not offenders, "ImportError fallback around the package's own modules: " + ", ".join(offenders)
