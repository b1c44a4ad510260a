"""The sandbox's fab tasks (`fab sandbox.up|status|down`). The fleet module is
imported when a sandbox task runs, not when `fab` starts."""
from __future__ import annotations

import json

from invoke import Collection, Task

from ..cli.base import fabship_task


def _fleet():
    from . import fleet

    return fleet


class _UpTask(Task):
    """`registry` is a tri-state flag (None = on with --docker); invoke would
    otherwise make a None default a string option."""

    def arg_opts(self, name, default, taken_names):
        opts = super().arg_opts(name, default, taken_names)
        if name == "registry":
            opts["kind"] = bool
        return opts


@fabship_task(
    klass=_UpTask, iterable=(), incrementable=(),
    help={
        "count": "number of hosts h1..hN (default 3)",
        "docker": "hosts can run Docker (all capabilities, writable cgroups, own /var/lib/docker)",
        "moto": "run the moto EC2 stand-in on BRIDGE:5005 (default on; --no-moto)",
        "pebble": "run Pebble ACME + challtestsrv DNS on BRIDGE:14000/8053 (default on; "
                  "--no-pebble)",
        "registry": "run a Docker registry on BRIDGE:5000 (default: on with --docker)",
        "no-registry": "do not run the Docker registry, even with --docker",
    },
)
def up(c, count=3, docker=False, moto=True, pebble=True, registry=None, no_registry=False):
    """Boot the local sandbox fleet of real Debian 12 hosts (root)."""
    reg = _fleet().registry_choice(registry, no_registry)
    _fleet().sandbox_up(count, docker=docker, moto=moto, pebble=pebble, registry=reg)


@fabship_task(help={"json": "print the status as JSON"}, iterable=(), incrementable=())
def status(c, json_=False):
    """Show the sandbox hosts and stand-ins."""
    st = _fleet().sandbox_status()
    if json_:
        print(json.dumps(st, indent=2, default=str))
        return
    if not st.get("phase"):
        print("sandbox is down")
        return
    print(f"sandbox: {'up' if st['up'] else 'NOT healthy'} ({st['phase']}), {st['count']} hosts,"
          f" docker: {'yes' if st['docker'] else 'no'}, bridge {st['bridge_ip']}")
    for h in st["hosts"]:
        print(f"  {h['name']:<4} {h['address']:<13} pid {str(h['pid']):<7} "
              f"{'alive' if h['alive'] else 'DEAD ':<5}  ssh:{'open' if h['ssh_port'] else 'closed':<6}"
              f"  system: {h['system']}")
    for s in st["services"]:
        ports = ",".join(str(p) for p in s["ports"])
        health = "answering" if s["answering"] else ("alive, NOT answering" if s["alive"]
                                                     else "DEAD")
        print(f"  {s['name']:<13} pid {s['pid']:<7} :{ports:<12} {health}")
    if st.get("inventory"):
        print(f"  inventory: {st['inventory']}")


@fabship_task(help={}, iterable=(), incrementable=())
def down(c):
    """Stop the sandbox fleet and remove everything it made (root)."""
    _fleet().sandbox_down()


ns = Collection("sandbox", up, status, down)
