"""The `fabship` console script: invoke's Program over fabship's own task
namespace (the same tasks and options as `fab` in this repository), so a team
needs no fabfile. `fabship init` scaffolds an ops repository; `--root DIR`
(or FABSHIP_ROOT) says where that repository is when it is not the current
directory."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from invoke import Argument, Program

from .. import __version__


class FabshipProgram(Program):
    def core_args(self):
        return super().core_args() + [
            Argument(names=("root",), help="the ops repository (inventories/, .fabship/); "
                                           "default: $FABSHIP_ROOT, else the current directory"),
        ]

    def parse_core(self, *args, **kwargs):
        super().parse_core(*args, **kwargs)
        root = self.args["root"].value
        if root:
            if not Path(root).is_dir():
                print(f"fabship: --root {root}: not a directory", file=sys.stderr)
                raise SystemExit(2)
            os.environ["FABSHIP_ROOT"] = str(Path(root).resolve())

    def print_version(self):
        import fabric
        import invoke
        import paramiko

        print(f"fabship {__version__}")
        print(f"Fabric {fabric.__version__}")
        print(f"Paramiko {paramiko.__version__}")
        print(f"Invoke {invoke.__version__}")


def init_main(argv: list[str]) -> int:
    """`fabship init [DIR] [--name NAME] [--ec2 REGION TAG | --static HOST...]`."""
    from ..core.errors import FabshipError
    from .init import run_init

    p = argparse.ArgumentParser(prog="fabship init", description="Scaffold an ops repository for fabship: "
                                "an inventory (and its git-ignored .local layer), an env contract stub, a "
                                "known_hosts policy, .gitignore lines and a two-line fabfile.py. Never "
                                "overwrites a file.")
    p.add_argument("dir", nargs="?", default=".", help="the ops repository (default: the current directory)")
    p.add_argument("--name", default="dev", help="inventory/environment name (default: dev)")
    p.add_argument("--app", help="app name (default: from the directory's name)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--ec2", nargs=2, metavar=("REGION", "TAG"),
                       help="find hosts by EC2 tag: REGION and KEY=VALUE (a bare VALUE is the Name tag)")
    where.add_argument("--static", nargs="+", metavar="HOST", help="static hosts: [NAME=]ADDRESS ...")
    p.add_argument("--user", help="SSH user (default: root, or ec2-user with --ec2)")
    p.add_argument("--key-file", help="SSH private key path, written to the git-ignored NAME.local.yaml")
    a = p.parse_args(argv)
    try:
        run_init(a.dir, name=a.name, app=a.app, static=a.static, ec2=tuple(a.ec2) if a.ec2 else None,
                 user=a.user, key_file=a.key_file)
    except FabshipError as e:
        print(f"fabship: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv if argv is None else argv)
    rest = argv[1:]
    # `init` takes a positional DIR and `--ec2 REGION TAG`, which invoke's parser has no form for
    if rest and rest[0] == "init":
        raise SystemExit(init_main(rest[1:]))
    from .remainder import RemainderExecutor  # `fabship exec -- CMD`
    from .namespace import ns

    FabshipProgram(name="fabship", binary="fabship", binary_names=["fabship"], version=__version__, namespace=ns,
                   executor_class=RemainderExecutor).run(argv)


if __name__ == "__main__":
    main()
