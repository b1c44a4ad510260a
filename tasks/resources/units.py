"""systemd units: render from templates/systemd/, verify, install, reload, enable.

`apply_units(ctx, units, enable=...)` is the primitive deploy reuses: it
writes only units whose bytes differ, runs `systemd-analyze verify` on the
new files *before* they replace anything (a template unit is verified as an
instance), runs daemon-reload only when a unit changed, and enables the
named units (an already enabled unit is left alone). One remote command.

Unit contract (docs/ARCHITECTURE.md): `restart` strategy -> APP.service on
/opt/APP/current; `blue_green` -> template APP@.service, instance = port,
WorkingDirectory /opt/APP/.fabship/slots/%i. Bootstrap enables the first
blue/green port's instance (or APP.service) but never starts it: there is
no release before the first deploy.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..core.commands import Cmd, script, sh
from ..core.step import CHANGED, DEFAULT_FAILED, OK, Change, Failure, Record
from ..core.templates import render, sha256
from ..facts.script import FileSpec, put_files_lines, stage_lines, tar_payload

UNIT_DIR = "/etc/systemd/system"
VERIFY_REFUSED = 5   # units_cmd's exit when systemd-analyze verify refuses a new unit


@dataclass
class UnitFile:
    name: str            # app.service, app@.service
    content: str
    verify_as: str = ""  # instance name to verify a template unit as (app@3001.service)
    directory: str = UNIT_DIR

    @property
    def path(self) -> str:
        return f"{self.directory}/{self.name}"

    @property
    def is_template(self) -> bool:
        return "@." in self.name


def _unit_escape(value: str) -> str:
    """A value inside a quoted Environment= assignment: specifiers and quotes escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")


def render_app_unit(*, name: str, user: str, group: str, root: str, env_file: str, start: str,
                    strategy: str, port: int, restart_sec: int = 5, hardening: bool = True,
                    environment: dict | None = None, after: list | None = None, extra: dict | None = None,
                    description: str = "") -> UnitFile:
    """The app's unit for its strategy (see the module doc)."""
    blue_green = strategy == "blue_green"
    after = list(after or ["network-online.target"])
    wants = [u for u in after if u == "network-online.target"]
    text = render(
        "systemd/app.service.j2",
        instance=blue_green,
        description=description or (f"{name} on port %i (fabship blue/green)" if blue_green else f"{name} (fabship)"),
        after=after, wants=wants, user=user, group=group,
        working_directory=f"{root}/.fabship/slots/%i" if blue_green else f"{root}/current",
        env_file=env_file,
        environment={k: _unit_escape(str(v)) for k, v in (environment or {}).items()},
        port="%i" if blue_green else str(port),
        # a literal % in the user's command is not a systemd specifier
        start=start.replace("%", "%%"),
        restart_sec=restart_sec, hardening=hardening, extra=dict(extra or {}), app=name,
    )
    unit_name = f"{name}@.service" if blue_green else f"{name}.service"
    return UnitFile(unit_name, text, verify_as=f"{name}@{port}.service" if blue_green else "")


def enable_name(unit: UnitFile, port: int) -> str:
    return unit.verify_as or (f"{unit.name.split('@')[0]}@{port}.service" if unit.is_template else unit.name)


def units_up_to_date(facts, units: list[UnitFile], enable: list[str]) -> tuple[list[UnitFile], list[str]]:
    """(units whose file differs, units not enabled) according to facts."""
    stale = [u for u in units if facts.sha256.get(u.path) != sha256(u.content)]
    off = [e for e in enable if not facts.unit_enabled(e)]
    return stale, off


def units_cmd(units: list[UnitFile], enable: list[str]) -> Cmd:
    """One script: stage, verify, install changed, daemon-reload if needed, enable.
    Prints `installed NAME`, `enabled NAME` lines for what it changed."""
    files = [FileSpec(u.path, u.content.encode(), "root", "root", "0644") for u in units]
    L = stage_lines() + ["changed=0"]
    for i, u in enumerate(units):
        want = sha256(u.content)
        check = sh('[ "$(sha256sum < {} 2>/dev/null | cut -d" " -f1)" = {} ]', u.path, want).render()
        L.append(f"if {check}; then skip{i}=1; else skip{i}=0; fi")
        vname = u.verify_as or u.name
        vpath = f'"$stage/v{i}/"' + sh("{}", vname).render()
        # Verify the new bytes under their own (or an instance) name, alone in a
        # directory, before installing. systemd only warns about unknown keys and
        # unparsable values ("..., ignoring"): any line about this file is a refusal.
        L.append(f'if [ "$skip{i}" = 0 ]; then mkdir -p "$stage/v{i}" && cp "$stage/{i}" {vpath}; '
                 f'if ! out=$(systemd-analyze verify {vpath} 2>&1) || '
                 f'printf "%s\\n" "$out" | grep -qF "$stage/v{i}/"; then '
                 + sh('echo "systemd-analyze verify {} refused it:" >&2; ', u.name).render()
                 + f'printf "%s\\n" "$out" | sed "s|$stage/v{i}/|/etc/systemd/system/|" >&2; '
                 f'exit {VERIFY_REFUSED}; fi; fi')
    for i, (u, f) in enumerate(zip(units, files)):
        put = " ; ".join(put_files_lines([f], offset=i))
        L.append(f'if [ "$skip{i}" = 0 ]; then {put}; changed=1; echo ' + sh("installed {}", u.name).render() + "; fi")
    L.append('if [ "$changed" = 1 ]; then systemctl daemon-reload; fi')
    for e in enable:
        L.append(sh("systemctl is-enabled -q -- {} 2>/dev/null || {{ systemctl enable -q -- {} && echo enabled {}; }}",
                    e, e, e).render())
    return script(L)


def apply_units(ctx, units: list[UnitFile], enable: list[str] | None = None, *, facts=None,
                step: str = "systemd units") -> bool:
    """Install/verify/reload/enable (see units_cmd). With facts, nothing runs when
    everything is up to date. Returns True when something changed."""
    enable = list(enable or [])
    if facts is not None:
        stale, off = units_up_to_date(facts, units, enable)
        if not stale and not off:
            ctx.ok(step, ", ".join(u.name for u in units) + " up to date" +
                   (f"; enabled {', '.join(enable)}" if enable else ""))
            return False
    else:
        stale, off = units, enable
    from ..core.templates import unified_diff

    msg = "; ".join(filter(None, [
        ("install " + ", ".join(u.name for u in stale)) if stale else "",
        ("enable " + ", ".join(off)) if off else "",
    ]))
    done = ctx.apply(step, Change(
        msg, (units_cmd(units, enable),), stdin=tar_payload([FileSpec(u.path, u.content.encode()) for u in units]),
        # the dry run's preview (the facts hold the old bytes only then)
        diff=(lambda: "".join(unified_diff(facts.contents.get(u.path), u.content, u.path) for u in stale))
        if facts is not None else "",
        exits={VERIFY_REFUSED: lambda res: Failure(
            "systemd-analyze verify refused the new unit (nothing installed): "
            + next((ln.strip() for ln in res.stderr.splitlines()[1:] if ln.strip()), "see details"))},
        failed=DEFAULT_FAILED, tail=40, outcome=units_outcome))
    return done.changed


def units_outcome(res) -> list[Record]:
    """`installed NAME` / `enabled NAME` lines -> changed (daemon-reload when a file
    was installed); none -> ok "up to date"."""
    done = [ln for ln in res.stdout.splitlines() if ln.startswith(("installed ", "enabled "))]
    if not done:
        return [Record(OK, "up to date")]
    return [Record(CHANGED, "; ".join(done) + ("" if not any(d.startswith("installed") for d in done)
                                              else " (daemon-reload)"))]
