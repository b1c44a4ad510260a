"""Print the README's faults x invariants table from the last full run's
results (.fabship/faults/last-full.json; a CI-subset or partial run writes
last-run.json), or from the file(s) given: the parts of one full matrix run
in several sessions (FABSHIP_FAULTS_OUT=part-N.json each, so that no session
holds the integration lock too long) are merged into one table and one line
of figures (points and seconds added up, the first part's load at the start,
the last part's at the end):

    python3 tests/integration/faults/table.py [RESULTS.json ...]
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


def merge(parts: list[dict]) -> dict:
    if len(parts) == 1:
        return parts[0]
    return {"full": all(p["full"] for p in parts), "when": min(p["when"] for p in parts),
            "cases": sum(p["cases"] for p in parts), "seconds": sum(p["seconds"] for p in parts),
            "load": [parts[0]["load"][0], parts[-1]["load"][1] if len(parts[-1]["load"]) > 1 else None],
            "violations": sum(p["violations"] for p in parts),
            "results": [r for p in parts for r in p["results"]], "parts": len(parts)}


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
    parts = f" ({data['parts']} sessions)" if data.get("parts") else ""
    kind = "Full matrix" if data["full"] else "CI subset"
    lines.append(f"{kind} of {data['when']}{parts}: {data['cases']} points in "
                 f"{data['seconds'] // 60}m{data['seconds'] % 60:02d}s, {data['violations']} broken invariant(s); "
                 f"load average {load[0] if load else '?'} at the start, {load[1] if len(load) > 1 else '?'} "
                 "at the end (1 min).")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(merge([json.loads(Path(a).read_text()) for a in (sys.argv[1:] or [RESULTS])])))
