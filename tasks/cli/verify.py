"""`fab verify`: the checks of every host through the gate's backend, one
pass/fail table, or an OpenSSH config for the shipped pytest suite."""
from __future__ import annotations

import time
from pathlib import Path

from ..core.errors import ConfigError
from ..verify import checks as C
from ..verify import spec as CS
from ..verify.gate import build_spec, plan, verify_host, write_ssh_config


def _split(value) -> list[str]:
    if not value:
        return []
    if isinstance(value, (list, tuple)):
        value = ",".join(value)
    return [x.strip() for x in str(value).split(",") if x.strip()]


def verify(opts, stage=None, only=None, ssh_config=None) -> None:
    """The `fab verify` task body: `opts` is the task's RunOptions (tasks/cli/base.py)."""
    from ..core.runner import print_table
    from .base import open_run

    only_l = _split(only)
    if stage and stage not in CS.STAGES:
        raise ConfigError("command line", "--stage", f"expected one of {', '.join(CS.STAGES)}, got {stage!r}")
    if ssh_config:
        inv = opts.load()
        write_ssh_config(inv, inv.resolve_hosts(opts.limit), ssh_config)
        print(f"wrote {ssh_config}; run: pytest {Path(__file__).parent / 'suite'} "
              f"--hosts=ssh://{inv.resolve_hosts(opts.limit)[0].name} --ssh-config={ssh_config} "
              f"--fabship-inventory={inv.path}")
        return
    run = open_run("verify", opts, options={"stage": stage, "only": only_l, "limit": opts.limit})
    # a failing check quotes the app's answer, which may echo an env value: mask
    # them like deploy does (local env source files)
    from .deploy import register_env_secrets

    register_env_secrets(run)
    # Validate everything before connecting: a bad verify section fails here, once.
    for h in run.hosts:
        _, selected = plan(run.inv, h, stage, only_l)
    if only_l:
        known = {c.name for h in run.hosts for c in C.checks_for(build_spec(run.inv, h))}
        bad = [n for n in only_l if not any(k == n or (n.endswith("*") and k.startswith(n[:-1])) for k in known)]
        if bad:
            raise ConfigError("command line", "--only", f"no such check: {', '.join(bad)}; known: "
                                                      f"{', '.join(sorted(known))}")
    results: dict[str, list[C.CheckResult]] = {}
    # One host: the whole checklist. More: failures and skips (-v for all).
    show_ok = len(run.hosts) == 1 and not opts.verbose

    def one(ctx):
        res = verify_host(ctx, stage, only_l)
        results[ctx.host.name] = res
        for r in res:
            ctx.record(r.name, {C.PASS: "ok", C.FAIL: "failed", C.SKIP: "skipped"}[r.status], r.message)
            if show_ok and r.status == C.PASS:
                ctx.say(f"{'ok':<12} {r.name}" + (f": {r.message}" if r.message else ""))
        failed = [r.name for r in res if r.status == C.FAIL]
        if failed:
            ctx.error = f"{len(failed)} check(s) failed: {', '.join(failed)}"

    run.each(one)
    rows = []
    for h in run.hosts:
        ctx = run.contexts[h.name]
        res = results.get(h.name)
        if res is None:  # unreachable or crashed: the error says why
            rows.append([h.name, "-", "-", "-", ctx.error or "not verified"])
            continue
        n = {s: sum(1 for r in res if r.status == s) for s in (C.PASS, C.FAIL, C.SKIP)}
        rows.append([h.name, str(n[C.PASS]), str(n[C.FAIL]), str(n[C.SKIP]),
                     ", ".join(r.name for r in res if r.status == C.FAIL) or "-"])
    run.extra["verify"] = {n: [r.as_dict() for r in res] for n, res in results.items()}
    what = f" (stage {stage})" if stage else ""
    print_table(["HOST", "PASSED", "FAILED", "SKIPPED", "FAILED CHECKS"], rows, run.out,
                title=f"verify{what} on {len(run.hosts)} host(s) in {time.monotonic() - run.t0:.1f}s")
    from .base import finish

    finish(run, summary=False)
