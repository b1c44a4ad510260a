"""Print the README's faults x invariants table from the last full run's
results (.fabship/faults/last-full.json; a CI-subset or partial run writes
last-run.json), or from the file given:

    python3 tests/integration/faults/table.py [RESULTS.json]
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from invariants import ALL  # noqa: E402

RESULTS = HERE.parents[2] / ".fabship" / "faults" / "last-full.json"


def table(data: dict) -> str:
    rows: dict[tuple, dict] = defaultdict(lambda: {"n": 0, "broken": defaultdict(int), "checked": set()})
    for r in data["results"]:
        key = (r["task"], r["fault"])
        rows[key]["n"] += 1
        rows[key]["checked"] |= set(r.get("checked") or ALL)
        for name in r["failed"]:
            rows[key]["broken"][name] += 1
    head = ["task", "fault", "points", *ALL]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (task, fault), v in sorted(rows.items()):
        cells = [task, fault, str(v["n"])]
        for name in ALL:
            b = v["broken"].get(name, 0)
            cells.append(f"**{b} broken**" if b else "ok" if name in v["checked"] else "n/a")
        extra = sorted(set(v["broken"]) - set(ALL))
        if extra:
            cells[-1] += " (" + ", ".join(f"{k}: {v['broken'][k]}" for k in extra) + ")"
        lines.append("| " + " | ".join(cells) + " |")
    load = data.get("load") or []
    lines.append("")
    lines.append(f"{'Full matrix' if data['full'] else 'CI subset'} of {data['when']}: {data['cases']} points in "
                 f"{data['seconds'] // 60}m{data['seconds'] % 60:02d}s, {data['violations']} broken invariant(s); "
                 f"load average {load[0] if load else '?'} at the start, {load[1] if len(load) > 1 else '?'} "
                 "at the end (1 min).")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(json.loads(Path(sys.argv[1] if len(sys.argv) > 1 else RESULTS).read_text())))
