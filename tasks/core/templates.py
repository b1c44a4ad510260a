"""Render Jinja2 templates from templates/: every file fabship writes on a host."""
from __future__ import annotations

import difflib
import functools
import hashlib
import os
import stat
from pathlib import Path

_PKG = Path(__file__).resolve().parents[1]
# installed: the package's own templates/ (package data); in the repository: templates/ beside tasks/
TEMPLATE_DIR = _PKG / "templates" if (_PKG / "templates").is_dir() else _PKG.parent / "templates"


def bytecode_dir() -> Path | None:
    """Where compiled templates are kept between runs (compiling them was ~1.7 ms
    a template at every run), or None. Jinja2 loads Python code from there, so
    only a directory of this user's own that nobody else can write is used."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    d = base / "fabship" / "templates"
    try:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = d.lstat()
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        return None
    return d


@functools.lru_cache(maxsize=1)
def environment():
    import jinja2

    d = bytecode_dir()
    return jinja2.Environment(
        # keyed by template name and the source's checksum: an edited template is compiled again
        bytecode_cache=jinja2.FileSystemBytecodeCache(str(d)) if d else None,
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
