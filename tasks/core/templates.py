"""Render Jinja2 templates from templates/: every file fabship writes on a host."""
from __future__ import annotations

import difflib
import functools
import hashlib
from pathlib import Path

_PKG = Path(__file__).resolve().parents[1]
# installed: the package's own templates/ (package data); in the repository: templates/ beside tasks/
TEMPLATE_DIR = _PKG / "templates" if (_PKG / "templates").is_dir() else _PKG.parent / "templates"


@functools.lru_cache(maxsize=1)
def environment():
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        undefined=jinja2.StrictUndefined,  # a missing variable is a bug, not an empty string
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
        auto_reload=False,  # templates do not change during a run: no stat per render per host
    )


def render(name: str, **variables) -> str:
    return environment().get_template(name).render(**variables)


def sha256(data: str | bytes) -> str:
    if isinstance(data, str):
        data = data.encode()
    return hashlib.sha256(data).hexdigest()


def unified_diff(old: str | None, new: str, path: str) -> str:
    a = (old or "").splitlines(keepends=True)
    b = new.splitlines(keepends=True)
    return "".join(difflib.unified_diff(a, b, fromfile=f"{path} (host)" if old is not None else "/dev/null",
                                        tofile=f"{path} (new)"))
