"""Release hooks (issue 15): the inventory's `hooks.before_build`, `before_switch`,
`after_switch` and `after_rollback`, each a list of shell commands.

Every hook runs ON THE HOST as the app user, in the release it belongs to, with
the app's env file already in place (kamal#1652: hooks that run before the env
exists cannot migrate a database):
- node/python/static/compose: `systemd-run --pipe --wait --uid=APPUSER
  --property=EnvironmentFile=ENV` — systemd (PID 1) reads the env file with the
  same rules as the app's unit, so no value is ever on a command line, in a
  shell's argv or in fabship's memory;
- docker: a one-off container of the release's image (`docker run --rm
  --env-file ENV`, the managed secrets/certs mounts, docker.run_args), like the
  app's own container.
Output is streamed with the host prefix; it passes the host-side mask
(`mask_filter`: secret-looking env values read on the host -> ***) and the
run's registered secrets. `once: true` runs a hook on one host per run (the
first that reaches it; the others wait for its result and fail when it failed),
e.g. migrations. before_build/before_switch failures fail the host's deploy
before the switch (the old release keeps serving); after_switch/after_rollback
failures are reported as failed steps but undo nothing (the release serves).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

from ..config.app import Layout
from ..core.commands import Cmd, quote, sh
from ..core.dotenv import MASK_MIN, SENSITIVE
from ..core.errors import StepFailed
from ..core.step import CHANGED, FAILED, Change, Record

STAGES = ("before_build", "before_switch", "after_switch", "after_rollback")
# a failure of these stops the host before its switch; the others only report
BLOCKING = ("before_build", "before_switch")
MISSING_ENV = 96  # exit status: the env file the hook needs is not there


@dataclass(frozen=True)
class Hook:
    stage: str
    index: int
    run: str
    once: bool = False
    timeout: float = 600
    name: str = ""

    @property
    def label(self) -> str:
        return f"hooks.{self.stage}[{self.index}]" + (f" ({self.name})" if self.name else "")

    @property
    def step(self) -> str:
        return f"hook {self.stage}[{self.index}]" + (f" {self.name}" if self.name else "")


def hooks_for(inv, stage: str) -> list[Hook]:
    out = []
    for i, item in enumerate(inv.get(f"hooks.{stage}") or []):
        if isinstance(item, str):
            out.append(Hook(stage, i, item))
        else:
            out.append(Hook(stage, i, item["run"], bool(item.get("once")), float(item.get("timeout") or 600),
                            item.get("name") or ""))
    return out


def all_hooks(inv) -> dict[str, list[str]]:
    """What the run record shows: each stage's commands (no values: they are the inventory's text)."""
    return {s: [h.run for h in hooks_for(inv, s)] for s in STAGES if inv.get(f"hooks.{s}")}


# -- the host-side mask ---------------------------------------------------------------------

_PART2 = r'part == 2 { b = (FNR > 1 ? b "\n" : "") $0; next }'
# secret_looking() of tasks/core/dotenv.py, in awk: the same names, MASK_MIN, long values
_STREAM = r"""part == 2 {
  if (!built) {
    built = 1; na = 0
    for (k in v) {
      if (length(v[k]) < %(min)d) continue
      if (tolower(k) ~ /%(sens)s/ || length(v[k]) >= 20 || index(" " ENVIRON["K"] " ", " " k " ")) {
        a[++na] = v[k]; if (jesc(v[k]) != v[k]) a[++na] = jesc(v[k])
      }
    }
    for (j = 1; j <= na; j++) for (l = j + 1; l <= na; l++) if (length(a[l]) > length(a[j])) { t = a[j]; a[j] = a[l]; a[l] = t }
  }
  line = $0
  for (j = 1; j <= na; j++) line = repl(line, a[j])
  print line; fflush(); next
}"""


def mask_awk(docker_literal: bool) -> str:
    """verify's env-file reader (checks.ENV_AWK: parses like systemd's
    EnvironmentFile=, or docker's --env-file for app.kind docker), streaming:
    each input line is printed at once with the env values masked."""
    from ..verify.probes import ENV_AWK

    if _PART2 not in ENV_AWK:
        raise RuntimeError("checks.ENV_AWK changed: the streaming mask cannot reuse it")
    sens = SENSITIVE.pattern.removeprefix("(?i)").replace("/", r"\/")
    prog = ENV_AWK.replace(_PART2, _STREAM % {"min": MASK_MIN, "sens": sens})
    return ("BEGIN { lit = 1 }\n" if docker_literal else "") + prog.strip()


def mask_filter(lay: Layout, rule_keys: list[str] = ()) -> str:
    """A shell filter (stdin -> stdout, line by line) that masks the app's
    secret-looking env values, read from the env file ON THE HOST by root.
    Without a readable env file it passes lines through."""
    prog = mask_awk(lay.kind == "docker")
    return "\n".join([
        # mawk reads a pipe in blocks unless told otherwise: lines must come out as they arrive
        'if awk -W version 2>/dev/null | grep -qi mawk; then _aw="awk -W interactive"; else _aw=awk; fi',
        sh("if [ -f {} ]; then M=mask K={} $_aw {} {} part=2 -; else cat; fi",
           lay.env_path, " ".join(rule_keys), prog, lay.env_path).render(),
    ])


def masked_pipeline(inner: str, mask: str) -> str:
    """`inner 2>&1 | mask`, exiting with inner's status (sh has no pipefail).
    `inner` is one command (its status is written to a root-only temp file)."""
    return "\n".join([
        'rcf=$(mktemp); trap \'rm -f -- "$rcf"\' EXIT',
        "{ " + inner,
        '  echo $? > "$rcf"; } 2>&1 | { ' + mask,
        "}",
        'rc=$(cat -- "$rcf"); exit "${rc:-1}"',
    ])


def mask_rule_keys(inv) -> list[str]:
    """Keys whose contract rules say they are secrets (as secret_looking reads them)."""
    rules = inv.get("env.contract.rules") or {}
    return sorted(k for k, r in rules.items() if r and (r.get("hex") or r.get("base64") or
                                                          (r.get("min_length") or 0) >= 12))


# -- command builders (pure) ------------------------------------------------------------------

def systemd_run(lay: Layout, workdir: str, command: str, *, env_required: bool, timeout: float,
                setenv: dict | None = None, pipe: bool = True, pty: bool = False,
                description: str = "fabship") -> Cmd:
    """The app user's process under PID 1, env file read by systemd itself."""
    envfile = ("" if env_required else "-") + lay.env_path
    parts = ["systemd-run", "--quiet", "--wait", "--collect", *(["--pty"] if pty else ["--pipe"] if pipe else []),
             f"--uid={lay.user}", f"--gid={lay.group}", f"--description={description}",
             f"--property=EnvironmentFile={envfile}", f"--property=RuntimeMaxSec={int(timeout)}",
             f"--setenv=HOME={lay.cache}"]
    for k, v in (setenv or {}).items():
        parts.append(f"--setenv={k}={v}")
    # cd as the app user (never a root chdir through a dir the app user owns)
    inner = f"cd -- {quote(workdir)} || exit 97\n{command}"
    return Cmd(*parts, "--", "/bin/sh", "-c", inner)


def docker_oneoff(lay: Layout, image: str, command: str, *, run_args: list[str] = (), labels: dict | None = None,
                  interactive: bool = False, tty: bool = False) -> Cmd:
    lab = []
    for k, v in (labels or {}).items():
        lab += ["--label", f"{k}={v}"]
    flags = (["-i"] if interactive else []) + (["-t"] if tty else [])
    return Cmd("docker", "run", "--rm", *flags, "--env-file", lay.env_path, "--label", f"fabship.app={lay.app}",
               *lab, *run_args, image, "sh", "-c", command)


def env_check(lay: Layout, required: bool) -> str:
    if not required:
        return ""
    return sh("if [ ! -f {} ]; then echo 'fabship: the env file {} is missing: run fab bootstrap or fab rotate-env' >&2; "
              "exit {}; fi", lay.env_path, lay.env_path, str(MISSING_ENV)).render()


def hook_cmd(inv, lay: Layout, hook: Hook, rid: str, *, image: str = "") -> Cmd:
    """One hook as one remote command: env check, the app user's process, the mask."""
    required = bool(inv.get("env.source")) or lay.kind == "docker"
    env = {"FABSHIP_RELEASE": rid, "FABSHIP_HOOK": hook.stage, "FABSHIP_APP": lay.app}
    if lay.kind == "docker":
        from ..resources.docker_files import mount_args

        run_args = list(inv.get("docker.run_args") or [])
        run_args = mount_args(inv, run_args) + run_args
        for k, v in env.items():
            run_args += ["-e", f"{k}={v}"]
        inner = docker_oneoff(lay, image, hook.run, run_args=run_args,
                              labels={"fabship.release": rid, "fabship.hook": hook.stage}).render()
        inner = f"timeout {int(hook.timeout)} {inner}"
    else:
        inner = systemd_run(lay, lay.release_dir(rid), hook.run, env_required=required, timeout=hook.timeout,
                            setenv=env, description=f"fabship {hook.label} of {lay.app} {rid}").render()
    body = "\n".join(x for x in [env_check(lay, required), masked_pipeline(inner, mask_filter(lay, mask_rule_keys(inv)))]
                     if x)
    return Cmd("sh", "-c", body)


# -- once: one host per run ---------------------------------------------------------------------

class _Once:
    def __init__(self):
        self.lock = threading.Lock()
        self.claims: dict[tuple, dict] = {}


_ONCE_LOCK = threading.Lock()


def _once_state(run) -> _Once:
    with _ONCE_LOCK:   # one registry per run, on the run itself (it lives as long as the run)
        st = getattr(run, "_fabship_once", None)
        if st is None:
            st = _Once()
            run._fabship_once = st
        return st


def claim_once(run, hook: Hook, host: str) -> tuple[bool, dict]:
    """(mine, claim): the first host to reach a once-hook runs it; the claim
    holds `host`, `done` (an Event) and `ok` once it finished."""
    st = _once_state(run)
    with st.lock:
        c = st.claims.get((hook.stage, hook.index))
        if c is None:
            c = st.claims[(hook.stage, hook.index)] = {"host": host, "done": threading.Event(), "ok": None}
            return True, c
        return False, c


# -- running --------------------------------------------------------------------------------------

def run_hooks(ctx, stage: str, rid: str, *, image: str = "") -> None:
    """Run the inventory's hooks of `stage` on ctx's host, in order. A failure
    of a BLOCKING stage raises StepFailed (the caller's cleanup keeps the old
    release serving); later stages record the failure and go on."""
    hooks = hooks_for(ctx.inv, stage)
    if not hooks:
        return
    lay = Layout.from_inventory(ctx.inv)
    for hook in hooks:
        _check_cancel(ctx)
        if hook.once:
            mine, claim = claim_once(ctx.run_, hook, ctx.host.name)
            if not mine:
                _follow_claim(ctx, hook, claim)
                continue
            try:
                ok = _run_one(ctx, lay, hook, rid, image)
            except BaseException:
                claim["ok"] = False
                raise
            finally:
                if claim["ok"] is None:
                    claim["ok"] = True
                claim["done"].set()
            claim["ok"] = ok
            if not ok and stage in BLOCKING:
                raise StepFailed(f"{hook.label} failed (once, on this host): deploy stopped before the switch")
        elif not _run_one(ctx, lay, hook, rid, image) and stage in BLOCKING:
            raise StepFailed(f"{hook.label} failed: deploy stopped before the switch; the old release keeps serving")


def _follow_claim(ctx, hook: Hook, claim: dict) -> None:
    """Another host runs this once-hook: wait for it, then go on or fail alike."""
    if ctx.dry_run:  # not a change: a dry run's claimer runs nothing, so there is nothing to wait for
        ctx.skipped(hook.step, f"once: would run on {claim['host']} only")
        _record(ctx, hook, "skipped", None, 0.0, f"once: on {claim['host']}")
        return
    while not claim["done"].wait(0.5):
        _check_cancel(ctx)
    if claim["ok"]:
        ctx.skipped(hook.step, f"once: ran on {claim['host']}")
        _record(ctx, hook, "skipped", None, 0.0, f"once: ran on {claim['host']}")
        return
    ctx.record(hook.step, "failed", f"once: failed on {claim['host']}")
    _record(ctx, hook, "failed", None, 0.0, f"once: failed on {claim['host']}")
    if hook.stage in BLOCKING:
        raise StepFailed(f"{hook.label} failed on {claim['host']} (once): deploy stopped before the switch; "
                         "the old release keeps serving")


def _run_one(ctx, lay: Layout, hook: Hook, rid: str, image: str) -> bool:
    what = f"{hook.run}" + (" (once)" if hook.once else "")
    ran = ["dry-run", None, ""]   # the run record's result, exit and note (a dry run runs nothing)

    def judged(r) -> list[Record]:
        if r.ok:
            ran[:] = ["ok", 0, ""]
            return [Record(CHANGED, f"{what}: exit 0")]
        why = {MISSING_ENV: f"the env file {lay.env_path} is missing", 124: f"timed out after {hook.timeout:g}s",
               97: f"cannot enter {lay.release_dir(rid)} as {lay.user}"}.get(r.exited, f"exit {r.exited}")
        ran[:] = ["failed", r.exited, why]
        return [Record(FAILED, f"{what}: {why}", fatal=False)]   # the caller decides (before/after the switch)

    done = ctx.apply(hook.step, Change(
        f"would run as {lay.user} in {lay.release_dir(rid)} with {lay.env_path}: {what}",
        (hook_cmd(ctx.inv, lay, hook, rid, image=image),), check=False, stream=True, timeout=hook.timeout + 60,
        announce=f"{hook.step}: {hook.run}", outcome=judged))
    _record(ctx, hook, ran[0], ran[1], done.duration, ran[2])
    return ran[0] != "failed"


def _record(ctx, hook: Hook, result: str, exited, duration: float, note: str) -> None:
    """The run record's `extra.hooks`: one entry per host and hook."""
    extra = getattr(ctx.run_, "extra", None)
    if extra is None:
        return
    extra.setdefault("hook_runs", []).append({
        "host": ctx.host.name, "stage": hook.stage, "index": hook.index, "name": hook.name, "command": hook.run,
        "once": hook.once, "result": result, "exit": exited, "duration": round(duration, 3), "note": note})


def _check_cancel(ctx) -> None:
    ev = getattr(ctx.run_, "cancel", None)
    if ev is not None and ev.is_set():
        from .activation import Cancelled

        raise Cancelled("interrupted")
