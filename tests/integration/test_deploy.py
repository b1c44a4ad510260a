"""fab deploy / rollback / releases / unlock on real hosts h3, h4, h5:
the issue's acceptance checks, in order (module-scoped state):
deploy v1 then v2; a broken v3 keeps v2 serving with diagnostics; a build
failure keeps v2; two concurrent deploys -> one refused naming the holder;
SIGINT mid-build -> old release serving and lock released; SIGKILL -> stale
lock reported, `fab unlock` breaks it; a batch deploy failing on one host
rolls the earlier hosts back in reverse order; rollback; releases table.
"""
import re
import signal
import time


from test_deploy_support import (
    APP, HOSTS, LIMIT, ROOT, active_instances, current, deploy_env, fab, fab_popen, lock_exists, must, out,  # noqa
    release_log, served_version, wait_for,
)


def deploy(env, *args, limit=LIMIT, timeout=600):
    return fab("deploy", "-i", str(env["inv"]), "--limit", limit, "--no-gate", *args, timeout=timeout)


def test_deploy_v1_then_v2(deploy_env):
    fleet = deploy_env["fleet"]
    r = deploy(deploy_env, "--ref", "v1")
    assert r.returncode == 0, out(r)[-3000:]
    assert {h: served_version(fleet, h) for h in HOSTS} == {h: "v1" for h in HOSTS}
    first = {h: current(fleet, h) for h in HOSTS}
    assert len(set(first.values())) == 1 and "-v1-" in first["h3"]  # one release id for the fleet
    r = deploy(deploy_env, "--ref", "v2")
    assert r.returncode == 0, out(r)[-3000:]
    text = out(r)
    for h in HOSTS:
        assert served_version(fleet, h) == "v2"
        rid = current(fleet, h)
        assert re.search(rf"{h} -> {re.escape(rid)}\s+\[deployed\]", text), text[-2000:]
        log = release_log(fleet, h)
        assert [e["result"] for e in log if e["action"] == "deploy"] == ["ok", "ok"]
        assert log[-1]["previous"] == first[h] and log[-1]["commit"] and log[-1]["user"]
        assert len(active_instances(fleet, h)) == 1  # the old instance was stopped
        audit = must(fleet, h, f"cat {ROOT}/.fabship/audit.log")
        assert audit.count("action=deploy") == 2 and "result=ok" in audit
        assert not lock_exists(fleet, h)
        # the release is built (dist/ from npm run build) and owned by the app user
        must(fleet, h, f"test -f {ROOT}/current/dist/server.js && test \"$(stat -c %U {ROOT}/current/)\" = {APP}")


def test_dry_run_changes_nothing(deploy_env):
    fleet = deploy_env["fleet"]
    before = {h: (current(fleet, h), len(release_log(fleet, h))) for h in HOSTS}
    r = deploy(deploy_env, "--ref", "v5", "--dry-run")
    assert r.returncode == 0, out(r)[-3000:]
    assert "would change" in out(r) and "switch traffic" in out(r)
    assert {h: (current(fleet, h), len(release_log(fleet, h))) for h in HOSTS} == before


def test_broken_release_keeps_old_serving_with_diagnostics(deploy_env):
    fleet = deploy_env["fleet"]
    t0 = time.monotonic()
    r = deploy(deploy_env, "--ref", "v3-broken")
    text = out(r)
    assert r.returncode != 0
    assert {h: served_version(fleet, h) for h in HOSTS} == {h: "v2" for h in HOSTS}
    # diagnostics: journal since the deploy began, unit status, the last health response
    assert "journalctl -u shipdemo@" in text and "systemctl status shipdemo@" in text
    assert "last health response" in text and "HTTP 503" in text and "FAIL_HEALTH" in text
    for h in HOSTS:
        log = release_log(fleet, h)
        assert log[-1]["result"] == "failed" and "-v3-broken-" in log[-1]["id"]
        assert len(active_instances(fleet, h)) == 1 and not lock_exists(fleet, h)
        assert "result=failed" in must(fleet, h, f"tail -n 1 {ROOT}/.fabship/audit.log")
    assert time.monotonic() - t0 < 120


def test_build_failure_keeps_old_serving(deploy_env):
    fleet = deploy_env["fleet"]
    r = deploy(deploy_env, "--ref", "v4-nobuild")
    assert r.returncode != 0
    assert "build failed" in out(r) and "FAIL_BUILD" in out(r)
    assert {h: served_version(fleet, h) for h in HOSTS} == {h: "v2" for h in HOSTS}
    assert all(not lock_exists(fleet, h) for h in HOSTS)


def test_two_concurrent_deploys_one_refused(deploy_env):
    fleet = deploy_env["fleet"]
    cmd = ["deploy", "-i", str(deploy_env["inv"]), "--limit", LIMIT, "--no-gate", "--ref", "v5"]
    a, b = fab_popen(*cmd), fab_popen(*cmd)
    oa, _ = a.communicate(timeout=600)
    ob, _ = b.communicate(timeout=600)
    codes = sorted([a.returncode, b.returncode])
    assert codes[0] == 0 and codes[1] != 0, oa[-2000:] + ob[-2000:]
    refused = oa if a.returncode else ob
    assert "deploy lock held by" in refused and "pid" in refused and "nothing was changed" in refused
    assert {h: served_version(fleet, h) for h in HOSTS} == {h: "v5" for h in HOSTS}
    assert all(not lock_exists(fleet, h) for h in HOSTS)


def _start_slow_deploy(env, ref):
    """A deploy whose build sleeps, so a signal lands mid-build."""
    p = fab_popen("deploy", "-i", str(env["inv"]), "--limit", LIMIT, "--no-gate", "--ref", ref,
                  "--set", 'deploy.build=["npm ci --no-audit --no-fund --offline", "sleep 60", "npm run build"]')
    fleet = env["fleet"]
    assert wait_for(lambda: all(fleet.run(h, "pgrep -x sleep >/dev/null || "
                                             "ls /proc/*/comm 2>/dev/null | xargs grep -lx sleep >/dev/null")[0] == 0
                                for h in HOSTS), timeout=120), "the build never started"
    return p


def test_sigint_mid_build_releases_lock_and_keeps_old(deploy_env):
    fleet = deploy_env["fleet"]
    p = _start_slow_deploy(deploy_env, "v1")
    p.send_signal(signal.SIGINT)
    o, _ = p.communicate(timeout=120)
    assert p.returncode == 130, o[-3000:]
    assert "interrupted" in o
    for h in HOSTS:
        assert served_version(fleet, h) == "v5"
        assert not lock_exists(fleet, h), f"{h}: lock left after SIGINT"
        assert release_log(fleet, h)[-1]["result"] == "interrupted"
        # the build's process group was killed
        rc, o2, _ = fleet.run(h, "grep -lx sleep /proc/[0-9]*/comm 2>/dev/null | wc -l")
        assert o2.strip() == "0", f"{h}: build still running"


def test_sigterm_mid_build_releases_lock(deploy_env):
    fleet = deploy_env["fleet"]
    p = _start_slow_deploy(deploy_env, "v1")
    p.send_signal(signal.SIGTERM)
    o, _ = p.communicate(timeout=120)
    assert p.returncode == 143, o[-3000:]
    assert all(not lock_exists(fleet, h) for h in HOSTS)
    assert {h: served_version(fleet, h) for h in HOSTS} == {h: "v5" for h in HOSTS}


def test_sigkill_leaves_stale_lock_then_unlock(deploy_env):
    fleet = deploy_env["fleet"]
    p = _start_slow_deploy(deploy_env, "v1")
    p.kill()
    p.communicate(timeout=60)
    for h in HOSTS:
        assert served_version(fleet, h) == "v5"
        assert lock_exists(fleet, h)
        fleet.run(h, "pkill -x sleep || kill $(grep -lx sleep /proc/[0-9]*/comm | cut -d/ -f3) 2>/dev/null; true")
    r = deploy(deploy_env, "--ref", "v1")
    assert r.returncode != 0
    assert "STALE deploy lock" in out(r) and "fab unlock" in out(r) and "is gone" in out(r)
    r = fab("unlock", "-i", str(deploy_env["inv"]), "--limit", LIMIT)
    assert r.returncode == 0, out(r)
    assert all(not lock_exists(fleet, h) for h in HOSTS)
    assert "action=unlock" in must(fleet, "h3", f"cat {ROOT}/.fabship/audit.log")


def test_batch_failure_rolls_back_earlier_hosts_in_reverse(deploy_env):
    """h5's env makes any new instance fail its health check; with --batch 1
    h3 and h4 switch first, h5 fails, then h4 and h3 go back (in that order)."""
    fleet = deploy_env["fleet"]
    env_file = f"/etc/{APP}/{APP}.env"
    must(fleet, "h5", f"cp -p {env_file} /root/{APP}.env.keep && echo FAIL_HEALTH=1 >> {env_file}")
    try:
        r = deploy(deploy_env, "--ref", "v2", "--batch", "1")
        text = out(r)
        assert r.returncode != 0
        i4, i3 = text.find("fleet rollback: h4"), text.find("fleet rollback: h3")
        assert 0 <= i4 < i3, text[-3000:]
        assert {h: served_version(fleet, h) for h in HOSTS} == {h: "v5" for h in HOSTS}
        for h in ("h3", "h4"):
            log = release_log(fleet, h)
            assert log[-1]["action"] == "rollback" and log[-1]["result"] == "ok"
            assert re.search(rf"{h} -> \S+-v5-\S+\s+\[rolled back\]", text)
        assert all(not lock_exists(fleet, h) for h in HOSTS)
    finally:
        must(fleet, "h5", f"mv /root/{APP}.env.keep {env_file}")


def test_rollback_and_releases(deploy_env):
    fleet = deploy_env["fleet"]
    inv = str(deploy_env["inv"])
    r = fab("rollback", "-i", inv, "--limit", LIMIT, "--no-gate")
    assert r.returncode == 0, out(r)[-3000:]
    assert {h: served_version(fleet, h) for h in HOSTS} == {h: "v2" for h in HOSTS}
    target = current(fleet, "h3")
    r = fab("releases", "-i", inv, "--limit", LIMIT)
    assert r.returncode == 0, out(r)
    assert re.search(rf"\*\s+{re.escape(target)}", out(r))
    assert "v5" in out(r) and "failed" in out(r)
    # --to a release that is not there: refused, nothing changed
    r = fab("rollback", "-i", inv, "--limit", LIMIT, "--to", "20000101T000000Z-nope", "--no-gate")
    assert r.returncode != 0 and "does not exist" in out(r)
    assert {h: served_version(fleet, h) for h in HOSTS} == {h: "v2" for h in HOSTS}
    # roll forward to the named v5 release
    v5 = next(e["id"] for e in reversed(release_log(fleet, "h3")) if "-v5-" in e["id"] and e["result"] == "ok")
    r = fab("rollback", "-i", inv, "--limit", LIMIT, "--to", v5, "--no-gate")
    assert r.returncode == 0, out(r)[-3000:]
    assert {h: served_version(fleet, h) for h in HOSTS} == {h: "v5" for h in HOSTS}


def test_rollback_refuses_without_a_target(deploy_env, tmp_path):
    from test_deploy_support import write_inventory

    fleet = deploy_env["fleet"]
    inv = write_inventory(tmp_path, deploy_env["repo"], app="shipsolo", port=3400)
    fleet.run("h4", "rm -rf /opt/shipsolo; systemctl stop 'shipsolo@*' 2>/dev/null; true")
    r = fab("bootstrap", "-i", str(inv), "--limit", "h4", "--no-gate", timeout=900)
    assert r.returncode == 0, out(r)[-3000:]
    r = fab("rollback", "-i", str(inv), "--limit", "h4", "--no-gate")
    assert r.returncode != 0 and "nothing is deployed" in out(r)
    r = fab("deploy", "-i", str(inv), "--limit", "h4", "--no-gate", "--ref", "v1")
    assert r.returncode == 0, out(r)[-3000:]
    r = fab("rollback", "-i", str(inv), "--limit", "h4", "--no-gate")
    assert r.returncode != 0 and "nothing to roll back to" in out(r)
    assert not lock_exists(fleet, "h4", "shipsolo")


def test_keep_releases_prunes_but_keeps_current_and_last_good(deploy_env):
    fleet = deploy_env["fleet"]
    for ref in ("v1", "v2", "v5"):
        r = deploy(deploy_env, "--ref", ref)
        assert r.returncode == 0, out(r)[-2000:]
    for h in HOSTS:
        rels = must(fleet, h, f"ls {ROOT}/releases").split()
        assert len(rels) <= 3 + 1, rels  # keep_releases 3 (+ the last good one before current)
        assert current(fleet, h) in rels


def test_restart_strategy_switches_back_on_failure(deploy_env, tmp_path):
    """strategy restart (APP.service on /opt/APP/current): a failing release is
    switched back to the previous one and restarted."""
    from test_deploy_support import write_inventory

    fleet, app = deploy_env["fleet"], "shiprs"
    inv = str(write_inventory(tmp_path, deploy_env["repo"], app=app, port=3410,
                              extra={"deploy": {"source": "git", "repo": str(deploy_env["repo"]), "strategy": "restart",
                                                "build": ["npm ci --no-audit --no-fund --offline", "npm run build"]}}))
    fleet.run("h4", f"systemctl stop {app} 2>/dev/null; rm -rf /opt/{app}; true")
    r = fab("bootstrap", "-i", inv, "--limit", "h4", "--no-gate", timeout=900)
    assert r.returncode == 0, out(r)[-3000:]
    for ref in ("v1", "v2"):
        r = fab("deploy", "-i", inv, "--limit", "h4", "--no-gate", "--ref", ref)
        assert r.returncode == 0, out(r)[-3000:]
        assert served_version(fleet, "h4", app) == ref
    r = fab("deploy", "-i", inv, "--limit", "h4", "--no-gate", "--ref", "v3-broken")
    assert r.returncode != 0 and f"journalctl -u {app}.service" in out(r) and "switched back" in out(r)
    assert served_version(fleet, "h4", app) == "v2"
    assert must(fleet, "h4", f"systemctl is-active {app}.service").strip() == "active"
    r = fab("rollback", "-i", inv, "--limit", "h4", "--no-gate")
    assert r.returncode == 0, out(r)[-3000:]
    assert served_version(fleet, "h4", app) == "v1"


def test_unreachable_host_counts_as_failed(deploy_env, tmp_path):
    """A host that cannot be reached fails the deploy before anything changes
    (max-fail 0); with --max-fail 1 the others deploy and the exit is still non-zero."""
    import yaml

    fleet = deploy_env["fleet"]
    data = yaml.safe_load(deploy_env["inv"].read_text())
    sandbox = yaml.safe_load(open(data["include"][0]))
    hosts = {h: sandbox["hosts"]["static"][h] for h in ("h3", "h4")}
    hosts["ghost"] = {"address": fleet.host("h5").address, "port": 2}  # nothing listens: refused
    data["hosts"] = {"static": hosts}
    inv = tmp_path / "ghost.yaml"
    inv.write_text(yaml.safe_dump(data))
    before = {h: current(fleet, h) for h in ("h3", "h4")}
    r = fab("deploy", "-i", str(inv), "--no-gate", "--ref", "v1")
    assert r.returncode != 0 and "unreachable" in out(r).lower()
    assert "deploy stopped before changing anything" in out(r)
    assert {h: current(fleet, h) for h in ("h3", "h4")} == before
    assert all(not lock_exists(fleet, h) for h in ("h3", "h4"))
    r = fab("deploy", "-i", str(inv), "--no-gate", "--ref", "v1", "--max-fail", "1")
    assert r.returncode != 0
    assert re.search(r"h3 -> \S+-v1-\S+\s+\[deployed\]", out(r)) and "ghost -> unknown" in out(r)
    assert {h: served_version(fleet, h) for h in ("h3", "h4")} == {"h3": "v1", "h4": "v1"}


def test_lock_wait_waits_for_the_holder(deploy_env):
    """A second deploy with --lock-wait waits for the first instead of failing."""
    fleet = deploy_env["fleet"]
    cmd = ["deploy", "-i", str(deploy_env["inv"]), "--limit", "h3", "--no-gate"]
    a = fab_popen(*cmd, "--ref", "v2", "--set", 'deploy.build=["npm ci --offline", "sleep 4", "npm run build"]')
    assert wait_for(lambda: lock_exists(fleet, "h3"), timeout=60)
    b = fab_popen(*cmd, "--ref", "v5", "--lock-wait", "120")
    oa, _ = a.communicate(timeout=300)
    ob, _ = b.communicate(timeout=300)
    assert a.returncode == 0, oa[-2000:]
    assert b.returncode == 0 and "waiting for the deploy lock" in ob, ob[-2000:]
    assert served_version(fleet, "h3") == "v5"


def test_failure_report_masks_env_secrets(deploy_env, tmp_path):
    """The failure report quotes the app's answer and logs; an env value that
    shows up there (here the app echoes APP_VERSION in /health) is masked in
    the output and the run record."""
    import glob
    import os

    from test_deploy_support import write_inventory

    fleet, app, canary = deploy_env["fleet"], "shipcanary", "CanaryS3cretValue-7f3a9"
    inv = write_inventory(tmp_path, deploy_env["repo"], app=app, port=3420,
                          extra={"health": {"retries": 6, "interval": 0.5, "path": "/health"}})
    env_file = tmp_path / f"{app}.env"
    env_file.write_text(f"APP_SECRET=deploy-test-secret-0123456789\nAPP_VERSION={canary}\nFAIL_HEALTH=1\n")
    fleet.run("h5", f"systemctl stop '{app}@*' 2>/dev/null; rm -rf /opt/{app}; true")
    r = fab("bootstrap", "-i", str(inv), "--limit", "h5", "--no-gate", timeout=900)
    assert r.returncode == 0, out(r)[-3000:]
    runs = tmp_path / "runs"
    r = fab("deploy", "-i", str(inv), "--limit", "h5", "--no-gate", "--ref", "v1", env={"FABSHIP_RUNS_DIR": str(runs)})
    assert r.returncode != 0 and "last health response" in out(r)
    assert canary not in out(r) and '"version":"***"' in out(r)
    rec = sorted(glob.glob(str(runs / "*deploy*.json")))[-1]
    assert canary not in open(rec).read() and oct(os.stat(rec).st_mode & 0o777) == "0o600"
    assert canary not in must(fleet, "h5", f"cat /opt/{app}/.fabship/releases.jsonl /opt/{app}/.fabship/audit.log")


def test_rotate_env_restart_app_blue_green(deploy_env, tmp_path):
    """restart_app (used by rotate-env) on blue/green: a new instance of the
    current release reads the new env on the idle port and takes over; a bad
    env leaves the old instance serving (old_serving) and the file restored."""
    fleet = deploy_env["fleet"]
    inv = str(deploy_env["inv"])
    rid = current(fleet, "h3")
    port_before = must(fleet, "h3", f"grep -o '127.0.0.1:[0-9]*' /etc/nginx/fabship/{APP}-upstream.conf").strip()
    good = tmp_path / "good.env"
    good.write_text("APP_SECRET=rotated-secret-0123456789abcdef\nLOG_LEVEL=warn\n")
    r = fab("rotate-env", "-i", inv, "--limit", "h3", "--env-file", str(good), "--no-gate")
    assert r.returncode == 0, out(r)[-3000:]
    port_after = must(fleet, "h3", f"grep -o '127.0.0.1:[0-9]*' /etc/nginx/fabship/{APP}-upstream.conf").strip()
    assert port_after != port_before and current(fleet, "h3") == rid  # same release, other port
    assert len(active_instances(fleet, "h3")) == 1
    bad = tmp_path / "bad.env"
    bad.write_text("APP_SECRET=short\nLOG_LEVEL=warn\n")  # the app's /health answers 503
    r = fab("rotate-env", "-i", inv, "--limit", "h3", "--env-file", str(bad), "--no-gate")
    assert r.returncode != 0 and "old instance kept serving" in out(r), out(r)[-3000:]
    assert must(fleet, "h3", f"grep -o '127.0.0.1:[0-9]*' /etc/nginx/fabship/{APP}-upstream.conf").strip() == port_after
    assert "rotated-secret" in must(fleet, "h3", f"cat /etc/{APP}/{APP}.env")
    assert served_version(fleet, "h3") and len(active_instances(fleet, "h3")) == 1
