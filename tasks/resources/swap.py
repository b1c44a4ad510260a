"""Swap file: the configured size at swap.path, mode 0600, exactly one fstab
line, active.

Check (from facts), then act in one remote script:
- enough swap already active elsewhere (>= size) and no file of ours: skipped;
- file missing or of another size: built as PATH.fabship-new (fallocate, or
  dd where fallocate is unsupported), chmod 600, mkswap, then renamed into
  place, so a half-made file never sits at PATH (an active old file is
  swapped off first);
- fstab: every line for PATH removed, the one line from
  templates/swap/fstab-line.j2 appended (rewritten only when it differs);
- swapon. Inside a container the kernel refuses swap (EPERM, or EINVAL on
  overlayfs): that is reported as `skipped: swapon not permitted in this
  container (...)` with the kernel's message, never hidden. On later runs
  in the same container swapon is not retried (the facts say why).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..config.schema_types import parse_size
from ..core.commands import Cmd, script, sh
from ..core.step import CHANGED, DEFAULT_FAILED, FAILED, SKIPPED, Change, Record
from ..core.templates import render

STEP = "swap"


@dataclass
class SwapPlan:
    size: int
    path: str
    skip: str = ""                  # whole step skipped: why
    make_file: bool = False
    swapoff_first: bool = False
    chmod: bool = False
    fix_fstab: bool = False
    swapon: bool = False            # try to activate
    container_skip: str = ""        # not active, not retried: why
    reasons: list[str] = field(default_factory=list)

    @property
    def changes(self) -> bool:
        return self.make_file or self.chmod or self.fix_fstab or self.swapon


def fstab_line(path: str) -> str:
    return render("swap/fstab-line.j2", path=path).strip()


def human(n: int) -> str:
    for unit, div in (("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if n >= div and n % div == 0:
            return f"{n // div}{unit}"
    return f"{n}B" if n < 1024 else f"{n / 1024**2:.0f}M"


def fstab_entries(facts, path: str) -> list[tuple[int, str]]:
    """fstab lines whose device field is exactly `path` (grep -F found candidates)."""
    out = []
    for n, line in facts.fstab:
        fields = line.split()
        if fields and not fields[0].startswith("#") and fields[0] == path:
            out.append((n, line))
    return out


def container_reason(facts) -> str:
    bits = [facts.virt] if facts.virt else []
    if facts.swap_fs:
        bits.append(f"swap file on {facts.swap_fs}")
    return ", ".join(bits)


def plan_swap(facts, size: str | int, path: str) -> SwapPlan:
    want = parse_size(size) if isinstance(size, str) else int(size)
    p = SwapPlan(want, path)
    st = facts.stats.get(path)
    ours = {path, getattr(facts, "swap_real", "") or path}   # /proc/swaps names the link's target
    active = [s for s in facts.swaps if s["name"] in ours]
    others = sum(s["size"] for s in facts.swaps if s["name"] not in ours)
    if st is None and others >= want:
        p.skip = f"enough swap already: {human(others)} active on " + ", ".join(
            s["name"] for s in facts.swaps if s["name"] not in ours)
        return p
    if st is None:
        p.make_file = True
        p.reasons.append(f"create {path} ({human(want)})")
    elif not st.is_file:
        p.skip = ""
        raise ValueError(f"{path} exists and is not a regular file ({st.kind})")
    elif st.size != want:
        p.make_file = True
        p.swapoff_first = bool(active)
        p.reasons.append(f"resize {path} {human(st.size)} -> {human(want)}")
    elif int(st.mode, 8) != 0o600 or st.owner != "root":
        p.chmod = True
        p.reasons.append(f"{path} mode {st.mode} -> 600")
    entries = fstab_entries(facts, path)
    if len(entries) != 1 or " ".join(entries[0][1].split()) != fstab_line(path):
        p.fix_fstab = True
        p.reasons.append("fstab: " + ("add the swap line" if not entries else
                                      f"{len(entries)} lines for {path} -> 1" if len(entries) > 1
                                      else "fix the swap line"))
    is_active = bool(active) and not p.make_file
    if not is_active:
        # Not retried where it cannot work: a container whose swap path is on
        # overlayfs. Elsewhere (the sandbox links /swapfile to a plain fs) retry.
        if facts.in_container and "overlay" in facts.swap_fs and not p.make_file and not p.chmod:
            p.container_skip = (f"swapon not permitted in this container ({container_reason(facts)}); "
                                f"{path} ({human(want)}, 0600) and its fstab line are in place")
        else:
            p.swapon = True
            if not p.make_file:
                p.reasons.append(f"swapon {path}")
    return p


def swap_script(p: SwapPlan) -> Cmd:
    """The remote script for a plan. Prints `swapon=ok`, or `swapon=failed <msg>`
    and `virt=<container>` so the caller can tell 'not permitted here' from a
    real failure."""
    mib = max(1, p.size // (1024 * 1024))
    # Build beside the real file: a linked swap path keeps its link.
    L: list = [sh("f={}", p.path), 'real=$(readlink -f -- "$f")', 'new="$real.fabship-new"', "umask 077"]
    if p.swapoff_first:
        L.append('swapoff -- "$f"')
    if p.make_file:
        L += [
            'rm -f -- "$new"',
            sh('fallocate -l {} -- "$new" 2>/dev/null || dd if=/dev/zero of="$new" bs=1M count={} status=none',
               str(p.size), str(mib)).render(),
            'chmod 600 -- "$new"',
            'mkswap -- "$new" >/dev/null',
            'mv -f -- "$new" "$real"',
        ]
    if p.chmod:
        L.append('chown root:root -- "$f" && chmod 600 -- "$f"')
    if p.fix_fstab:
        L += [
            "tmp=$(mktemp /etc/.fstab.XXXXXX)",
            'awk -v p="$f" \'$1 != p\' /etc/fstab > "$tmp"',
            sh("printf '%s\\n' {} >> \"$tmp\"", fstab_line(p.path)).render(),
            'chmod 644 -- "$tmp"',
            'mv -f -- "$tmp" /etc/fstab',
        ]
    if p.swapon:
        L += [
            'if out=$(swapon -- "$f" 2>&1); then echo swapon=ok; else',
            '  echo "swapon=failed $(echo "$out" | tr "\\n" " ")"',
            '  echo "virt=$(systemd-detect-virt -c 2>/dev/null || echo none)"; fi',
        ]
    return script(L)


def apply_swap(ctx, facts, size, path: str) -> None:
    try:
        p = plan_swap(facts, size, path)
    except ValueError as e:
        ctx.fail(STEP, str(e))
    if p.skip:
        ctx.skipped(STEP, p.skip)
        return
    if not p.changes:
        if p.container_skip:
            ctx.skipped(STEP, p.container_skip)
        else:
            ctx.ok(STEP, f"{path} {human(p.size)} active, in fstab once")
        return
    msg = "; ".join(p.reasons)
    ctx.apply(STEP, Change(msg, (swap_script(p),), failed=DEFAULT_FAILED,
                           outcome=lambda res: swap_outcome(p, facts, msg, res.stdout)))


def swap_outcome(p: SwapPlan, facts, msg: str, stdout: str) -> list[Record]:
    """The records of a swap script's output: a swapon refused in a container
    is the file's change plus `skipped: swap (activate)`; elsewhere it fails."""
    out = {k: v for k, _, v in (ln.partition("=") for ln in stdout.splitlines())}
    if p.swapon and out.get("swapon", "").startswith("failed"):
        err = out["swapon"][len("failed"):].strip()
        virt = out.get("virt", "none")
        file_msg = "; ".join(r for r in p.reasons if not r.startswith("swapon"))
        if virt and virt != "none":
            fs = f", swap file on {facts.swap_fs}" if facts.swap_fs else ""
            return ([Record(CHANGED, file_msg)] if file_msg else []) + [
                Record(SKIPPED, f"swapon not permitted in this container ({virt}{fs}): {err}", STEP + " (activate)")]
        return [Record(FAILED, f"swapon {p.path} failed: {err}" + (f" (after: {file_msg})" if file_msg else ""))]
    return [Record(CHANGED, msg)] + ([Record(SKIPPED, p.container_skip, STEP + " (activate)")]
                                     if p.container_skip else [])
