"""The env file a release runs with, snapshotted under the root-only
.fabship/env/ (so a rollback restores code and env together, and rotate-env
knows what the running app was started with)."""
from __future__ import annotations

from dataclasses import dataclass

from ..core.commands import Cmd, script, sh
from ..core.step import CHANGED, OK, SKIP, SKIPPED, Change, Record
from ..resources.envfile import put_in_place_lines


@dataclass(frozen=True)
class EnvTarget:
    app: str
    kind: str
    path: str
    owner: str
    group: str
    mode: str
    keep: int
    state: str       # APP_ROOT/.fabship
    current: str     # APP_ROOT/current

    @classmethod
    def from_inventory(cls, inv) -> "EnvTarget":
        from ..config.app import Layout

        if not inv.get("app.name"):
            raise inv.error("app.name", "required: rotate-env installs the env file of this app")
        from ..config.schema import check_env_mode

        a = Layout.from_inventory(inv)   # the one app model: the env file bootstrap installs
        check_env_mode(inv)   # the mode this target installs: refused before any host is touched
        # rotate-env restores from the .prev copy, so it keeps at least one
        return cls(app=a.app, kind=a.kind or "", path=a.env_path, owner=a.env_owner, group=a.env_group or a.group,
                   mode=a.env_mode, keep=max(1, a.env_keep), state=a.state, current=a.current)

    @property
    def snapshots(self) -> str:
        return f"{self.state}/env"

    def snapshot(self, rid: str) -> str:
        return f"{self.snapshots}/{rid}.env"


def _put_in_place(t: EnvTarget, src: str, keep: int) -> list[str]:
    """Script lines: copy $src over the env file atomically (temp 0600 in the
    same dir, fsync, owner/mode, rename), keeping the old one as .prev when keep>0."""
    return [
        "umask 077",
        sh("f={} src={} owner={} group={} mode={} keep={}", t.path, src, t.owner, t.group,
           t.mode if t.mode.startswith("0") else "0" + t.mode, keep).render(),
        'dir=$(dirname -- "$f"); base=$(basename -- "$f")',
        'tmp=$(mktemp "$dir/.$base.XXXXXX")',
        "trap 'rm -f \"$tmp\"' EXIT",
        'cat -- "$src" > "$tmp"',
        *put_in_place_lines('[ -f "$f" ]'),
    ]


def snapshot_cmd(t: EnvTarget, rid: str) -> Cmd:
    """Record the env file a release runs with: APP_ROOT/.fabship/env/<rid>.env
    (root 0600 in a root 0700 dir). Rollback to <rid> restores it."""
    from ..facts.releases import is_release_id

    if not is_release_id(rid):
        raise ValueError(f"not a release id: {rid!r}")
    return script([
        "umask 077",
        sh("f={} d={} dst={}", t.path, t.snapshots, t.snapshot(rid)),
        'install -d -m 0700 -o root -g root -- "$d"',
        'if [ -f "$f" ]; then',
        '  tmp=$(mktemp "$d/.snapshot.XXXXXX"); cat -- "$f" > "$tmp"; sync -- "$tmp" 2>/dev/null || true',
        '  mv -f -- "$tmp" "$dst"; echo "snapshot $(sha256sum < "$dst" | cut -d" " -f1)"',
        'else rm -f -- "$dst"; echo none; fi',
    ])


def release_env_restore_cmd(t: EnvTarget, rid: str) -> Cmd:
    """For `fab rollback` to <rid>: install the release's env snapshot as the
    env file (atomic, old one kept as .prev). Prints `missing`, `unchanged`
    or `changed old=<sha|-> new=<sha>`."""
    from ..facts.releases import is_release_id

    if not is_release_id(rid):
        raise ValueError(f"not a release id: {rid!r}")
    return script([
        sh("snap={} f0={}", t.snapshot(rid), t.path),
        '[ -f "$snap" ] || { echo missing; exit 0; }',
        'new=$(sha256sum < "$snap" | cut -d" " -f1); old=-',
        '[ -f "$f0" ] && old=$(sha256sum < "$f0" | cut -d" " -f1)',
        '[ "$new" != "$old" ] || { echo unchanged; exit 0; }',
        *_put_in_place(t, t.snapshot(rid), keep=t.keep),
        'echo "changed old=$old new=$new"',
    ])


def snapshot_delete_cmd(t: EnvTarget, rids: list[str]) -> Cmd | None:
    """Prune snapshots together with their releases."""
    from ..facts.releases import is_release_id

    if not rids:
        return None
    for r in rids:
        if not is_release_id(r):
            raise ValueError(f"not a release id: {r!r}")
    return Cmd("rm", "-f", "--", *[t.snapshot(r) for r in rids])


def snapshot_release_env(ctx, rid: str) -> str | None:
    """After a release went live: record its env file. Returns the sha256 (or None)."""
    t = EnvTarget.from_inventory(ctx.inv)
    done = ctx.apply("env snapshot", Change(commands=(snapshot_cmd(t, rid),), dry_run=SKIP))  # no step of its own
    out = done.stdout.strip().split()
    return out[1] if len(out) == 2 and out[0] == "snapshot" else None


def restore_release_env(ctx, rid: str) -> str:
    """Before rollback restarts <rid>: restore the env it ran with.
    Returns "missing" (no snapshot: env left as it is), "unchanged" or "changed"."""
    t = EnvTarget.from_inventory(ctx.inv)
    done = ctx.apply("env file", Change(f"restore the env file release {rid} ran with (if it differs)",
                                        (release_env_restore_cmd(t, rid),), what="restore release env",
                                        outcome=lambda r: [restored(t, rid, r.stdout)]))
    return {CHANGED: "changed", OK: "unchanged"}.get(done.records[-1].status, "missing")


def restored(t: EnvTarget, rid: str, stdout: str) -> Record:
    """release_env_restore_cmd's output -> the env file step's record."""
    word = (stdout.strip().split() or ["missing"])[0]
    if word == "changed":
        kv = dict(p.split("=", 1) for p in stdout.split() if "=" in p)
        return Record(CHANGED, f"{t.path}: restored the env of {rid} (sha256 {kv.get('old', '-')[:12]} -> "
                               f"{kv.get('new', '')[:12]})")
    if word == "unchanged":
        return Record(OK, f"{t.path} already is the env of {rid}")
    return Record(SKIPPED, f"no env snapshot for {rid}: env file left as it is")
