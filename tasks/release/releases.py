"""The release model on a host, as pure data and command builders.

/opt/APP/releases/<id>/      one dir per release (id = UTC stamp + version)
/opt/APP/current             -> releases/<id>, switched with ln -s tmp + mv -T
/opt/APP/.fabship/releases.jsonl   one JSON object per finished deploy/rollback
/opt/APP/.fabship/slots/<port>     blue/green: which release each port's unit runs
                                   (an absolute link: /opt/APP/releases/<id>)

Everything here is pure (no connection): the host's state comes from one
facts script (`state_script`) whose output `parse_state` turns into a
`HostState`. Commands are `Cmd` values, so unit tests compare them exactly.
"""
from __future__ import annotations

from datetime import datetime, timezone

from ..config.app import Layout, safe_part
from ..core.commands import Cmd, Raw, as_user, sh
from ..facts.releases import Entry, deployed_ok, is_release_id

# -- where things live ---------------------------------------------------------


# -- release ids and the release log --------------------------------------------


def release_id(version: str, now: datetime | None = None) -> str:
    """UTC stamp + version: sorts by time, says what it is."""
    now = now or datetime.now(timezone.utc)
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{safe_part(version)}"


def rollback_target(entries: list[Entry], existing: list[str], current: str | None) -> str | None:
    """The newest successfully deployed release older than the current one
    that still exists on the host (capistrano's rule: a second rollback goes
    one further back)."""
    good = deployed_ok(entries)
    cands = sorted(r for r in existing if r in good and r != current and (not current or r < current))
    return cands[-1] if cands else None


def releases_to_delete(existing: list[str], entries: list[Entry], current: str | None, keep: int,
                       protect: tuple = ()) -> list[str]:
    """Keep the newest `keep` good releases, the current one, the last good
    one before it, and `protect` (e.g. a release being deployed); delete the
    rest, failed and unfinished release dirs included."""
    good = deployed_ok(entries)
    ok_sorted = sorted(r for r in existing if r in good)
    keep_set = set(ok_sorted[-keep:]) if keep > 0 else set()
    if current:
        keep_set.add(current)
        last_good = rollback_target(entries, existing, current)
        if last_good:
            keep_set.add(last_good)
    keep_set.update(p for p in protect if p)
    return sorted(r for r in existing if r not in keep_set and is_release_id(r))


# -- command builders ---------------------------------------------------------------

def switch_symlink(link: str, target: str) -> Cmd:
    """Atomic re-point: a new symlink beside the old one, then rename(2) over it."""
    tmp = f"{link}.fabship-tmp"
    return sh("ln -sfn -- {} {} && mv -T -- {} {}", target, tmp, tmp, link)


def switch_current(lay: Layout, rid: str) -> Cmd:
    return switch_symlink(lay.current, f"releases/{rid}")


def point_slot(lay: Layout, port: int, rid: str) -> Cmd:
    """Blue/green: the port's unit runs whatever its slot link points at. The
    app user must be able to traverse .fabship to reach its WorkingDirectory,
    hence root:APPGROUP 0750 for both (as bootstrap makes them)."""
    return sh("install -d -m 0750 -o root -g {} -- {} {}", lay.group, lay.state,
              lay.slots) & switch_symlink(lay.slot(port), lay.release_dir(rid))


def delete_releases(lay: Layout, rids: list[str]) -> Cmd | None:
    if not rids:
        return None
    for r in rids:
        if not is_release_id(r):  # never let a bad id become `rm -rf releases/..`
            raise ValueError(f"not a release id: {r!r}")
    return Cmd("rm", "-rf", "--", *[lay.release_dir(r) for r in rids])


def append_lines_script(files: list[str], lines: list[str], ensure_dir: str | None = None) -> Cmd:
    """Append lines[i] to files[i] (release log, audit log...) in one round
    trip. The lines are positional arguments ("$1"...), quoted, never parsed
    by the shell; they hold no secrets (callers mask them)."""
    if len(files) != len(lines):
        raise ValueError("one line per file")
    body = ["umask 027"]
    if ensure_dir:
        body.append(sh("install -d -m 0750 -- {}", ensure_dir).render())
    for i, f in enumerate(files, 1):
        # a line cut short (a write on a full disk: ENOSPC) is ended first, so that
        # only it is lost and not the next line too, glued to it
        body.append(sh('if [ -s {} ] && [ -n "$(tail -c 1 -- {})" ]; then printf "\\n" >> {}; fi', f, f, f).render())
        body.append(sh(f'printf "%s\\n" "${i}" >> {{}}', f).render())
    return Cmd("sh", "-c", "set -eu\n" + "\n".join(body), "sh", *[ln.replace("\n", " ") for ln in lines])


# -- paths the app user can write ------------------------------------------------------
# releases/<id>, shared/ and .cache belong to the app user, whose code (and its
# build's dependencies) is less trusted than root. Root never follows a symlink
# there: work inside them runs as the app user (commands.as_user), and a link
# where fabship expects a dir or file fails the step with a line naming it.

REFUSED = 41   # exit status of a step that met a planted symlink (or a non-file)
NOLINK = ("nolink() { for p in \"$@\"; do if [ -L \"$p\" ]; then printf 'fabship: %s is a symlink; refusing to "
          "follow it (the app user can write where it is)\\n' \"$p\" >&2; exit " + str(REFUSED) + "; fi; done; }")


def refusal(text: str) -> str | None:
    """The `fabship: ...` line a NOLINK check printed, if any."""
    return next((ln.strip() for ln in (text or "").splitlines() if ln.startswith("fabship: ")), None)


def refused_step(e):
    """A StepFailed whose output holds a NOLINK refusal, re-said as that one line."""
    from ..core.errors import StepFailed

    line = refusal(getattr(e, "details", "") or "")
    return StepFailed(f"{e.message.split(' failed', 1)[0]}: {line[len('fabship: '):]}", e.details) if line else e


def path_chain(base: str, rel: str) -> list[str]:
    """base/a, base/a/b, base/a/b/c for rel = a/b/c: every component to check."""
    parts = rel.split("/")
    return [f"{base}/{'/'.join(parts[:i + 1])}" for i in range(len(parts))]


def shared_rel(p: str) -> str:
    """A shared dir/file entry as a normalised relative path (the schema refuses
    the rest; this guards command builders called directly)."""
    from ..config.schema_types import rel_path_problem

    q = str(p).strip("/")
    problem = rel_path_problem(q)
    if problem:
        raise ValueError(f"shared path {p!r}: {problem}")
    return q


def link_shared(lay: Layout, rid: str, shared_dirs: list[str], shared_files: list[str]) -> Cmd | None:
    """Shared dirs/files live in /opt/APP/shared and are symlinked into the
    release. All of it runs as the app user (both trees are its own), so a link
    it planted can steer nothing but itself; planted links are refused by name."""
    if not shared_dirs and not shared_files:
        return None
    rel, base = lay.release_dir(rid), lay.shared
    dirs, files = [shared_rel(d) for d in shared_dirs], [shared_rel(f) for f in shared_files]
    L = ["set -eu", "umask 022", NOLINK, sh("nolink {} {}", base, rel).render()]

    def link(src: str, dst: str) -> str:
        return sh("rm -rf -- {} && mkdir -p -- \"$(dirname -- {})\" && ln -sfn -- {} {}", dst, dst, src, dst).render()

    for d in dirs:
        s = f"{base}/{d}"
        # every component of the shared path, and the release path's parents (the last one is replaced)
        L.append(Cmd("nolink", *path_chain(base, d), *path_chain(rel, d)[:-1]).render())
        # 0755 U:G like bootstrap makes it (and verify expects)
        L.append(sh("mkdir -p -- {} && chgrp -- {} {} && chmod -- 0755 {}", s, lay.group, s, s).render())
        L.append(link(s, f"{rel}/{d}"))
    for f in files:
        s = f"{base}/{f}"
        L.append(Cmd("nolink", *path_chain(base, f), *path_chain(rel, f)[:-1]).render())
        if "/" in f:  # parents below shared/ only: a top-level file never re-modes shared/ itself
            parent = s.rsplit("/", 1)[0]
            L.append(sh("[ -d {} ] || mkdir -p -m 0750 -- {}", parent, parent).render())
        L.append(sh("[ -e {} ] || install -m 0640 -g {} /dev/null {}", s, lay.group, s).render())  # never truncated
        L.append(sh("[ -f {} ] || {{ printf 'fabship: %s is not a regular file\\n' {} >&2; exit {}; }}",
                    s, s, str(REFUSED)).render())
        L.append(link(s, f"{rel}/{f}"))
    return as_user(lay.user, Cmd(Raw("\n".join(L))))


# -- the facts script: one round trip --------------------------------------------------


