"""`fab hosts`: show the resolved host table. Read-only: connects to nothing."""
from __future__ import annotations

from ..core.output import report
from ..core.table import print_table


def show_hosts(inv, hosts) -> None:
    rows = []
    for h in hosts:
        tags = ", ".join(f"{k}={v}" for k, v in sorted(h.tags.items()))
        rows.append([h.name, h.address, h.user, str(h.port), h.source, ",".join(h.groups), tags])
    title = f"inventory {inv.name} ({' < '.join(inv.files)}): {len(hosts)} host(s)"
    if inv.data["ssh"].get("jump_host"):  # the SSH layer is loaded only to describe a hop
        from ..core.ssh import describe_jumps, parse_jump_hosts

        hops = parse_jump_hosts(inv.data["ssh"]["jump_host"], inv.data["ssh"]["user"])
        if hops:
            title += f", reached through jump host {describe_jumps(hops)}"
    print_table(["NAME", "ADDRESS", "USER", "PORT", "SOURCE", "GROUPS", "TAGS"], rows, title=title)
    report("inventory", str(inv.path))
    report("hosts", [{"name": h.name, "address": h.address, "user": h.user, "port": h.port, "source": h.source,
                      "groups": list(h.groups), "tags": dict(h.tags)} for h in hosts])
