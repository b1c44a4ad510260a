"""Where fabship finds the team's ops repository: inventories/, .fabship/ (run
records, local state) and the files inventories name. Never the installed
package: a wheel in site-packages holds no inventory."""
from __future__ import annotations

import os
from pathlib import Path

DEFAULT_DIR = "inventories"
ROOT_VAR = "FABSHIP_ROOT"


def project_root() -> Path:
    """`--root DIR` / $FABSHIP_ROOT when given, else the current directory."""
    env = os.environ.get(ROOT_VAR)
    if env:
        return Path(env).expanduser()
    return Path.cwd()
