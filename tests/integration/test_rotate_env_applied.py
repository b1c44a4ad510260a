"""rotate-env killed (SIGKILL) after it installed the new env file and before
it restarted the app (issue 11): the file on disk is new, the app still runs
the old values. The next, identical rotate-env must see that the file was
installed but never applied, restart the app with it and say so in the audit
log -- not answer "unchanged".

The app is rotdemo on h6 (tests/integration/test_rotate_env_support.py); its
/version answers APP_VERSION from its environment, so what the running
process was started with is read over HTTP on the host.
"""
from __future__ import annotations

import signal
import time

from fab_cli import start_fab
from test_rotate_env_support import (  # noqa: F401  (rot_app is a fixture)
    APP, ENV_PATH, GOOD_SECRET, HOST, PORT, env_file, fab, rot_app, rotate, write_inventory,
)

CONTRACT = {"contract": {"required": ["APP_SECRET"], "optional": ["APP_VERSION", "LOG_LEVEL"],
                         "rules": {"APP_SECRET": {"min_length": 16}}}}


def on_host(fleet, cmd: str) -> str:
    rc, out, err = fleet.run(HOST, cmd)
    assert rc == 0, f"{cmd!r} on {HOST}: {err or out}"
    return out.strip()


def served_version(fleet) -> str:
    return on_host(fleet, f"curl -fsS http://127.0.0.1:{PORT}/version")


def env_text(version: str) -> str:
    return f"APP_SECRET={GOOD_SECRET}\nAPP_VERSION={version}\nLOG_LEVEL=info\n"


def kill_between_install_and_restart(tmp_path, inv, new_env) -> str:
    """Start rotate-env, freeze it (SIGSTOP) the moment it reports the installed
    file, then SIGKILL it. Returns its output up to there."""
    p = start_fab("rotate-env", "-i", str(inv), "--limit", HOST, "--env-file", str(new_env),
                  runs_dir=tmp_path / "runs")
    seen = []
    deadline = time.monotonic() + 240
    try:
        for line in p.stdout:
            seen.append(line)
            if "changed" in line and "env file" in line and ENV_PATH in line:
                p.send_signal(signal.SIGSTOP)  # before its restart: that needs another round trip first
                break
            assert time.monotonic() < deadline, "".join(seen)
        else:
            raise AssertionError("rotate-env ended before installing:\n" + "".join(seen) + p.stderr.read())
    finally:
        p.kill()  # SIGKILL: no finally block, no lock release, no restart
        p.wait()
        p.stdout.close()
        p.stderr.close()
    return "".join(seen)


def test_killed_after_install_is_applied_by_the_identical_rerun(rot_app, tmp_path):
    fleet = rot_app
    inv = write_inventory(tmp_path, CONTRACT)
    r = rotate(tmp_path, inv, "--env-file", str(env_file(tmp_path, env_text("rot-1"), "one.env")))
    assert r.returncode == 0, r.stdout + r.stderr
    assert served_version(fleet) == "rot-1"
    pid_before = on_host(fleet, f"systemctl show -p MainPID --value {APP}.service")

    two = env_file(tmp_path, env_text("rot-2"), "two.env")
    out = kill_between_install_and_restart(tmp_path, inv, two)
    assert "APP_VERSION" in out  # the key diff was shown: the run got as far as the install
    # the state the issue describes: new file on disk, app on the old values
    assert "APP_VERSION=rot-2" in on_host(fleet, f"cat {ENV_PATH}")
    assert served_version(fleet) == "rot-1"
    assert on_host(fleet, f"systemctl show -p MainPID --value {APP}.service") == pid_before

    # the killed run left its lock: stale (its process is gone), broken by fab unlock
    r = fab(tmp_path, "unlock", "-i", str(inv), "--limit", HOST)
    assert r.returncode == 0, r.stdout + r.stderr

    r = rotate(tmp_path, inv, "--env-file", str(two))
    text = r.stdout + r.stderr
    assert r.returncode == 0, text
    assert "installed but never applied" in text, text
    assert "unchanged" not in text.split("HOST", 1)[-1], text  # the summary does not say unchanged
    assert served_version(fleet) == "rot-2"
    assert on_host(fleet, f"systemctl show -p MainPID --value {APP}.service") != pid_before
    last = on_host(fleet, f"tail -n 1 /opt/{APP}/.fabship/audit.log")
    assert "action=rotate-env" in last and "result=ok" in last and "interrupted run installed" in last, last

    # applied now: the same run again changes nothing and restarts nothing
    pid = on_host(fleet, f"systemctl show -p MainPID --value {APP}.service")
    r = rotate(tmp_path, inv, "--env-file", str(two))
    assert r.returncode == 0 and "installed but never applied" not in r.stdout, r.stdout
    assert on_host(fleet, f"systemctl show -p MainPID --value {APP}.service") == pid
    assert "result=unchanged" in on_host(fleet, f"tail -n 1 /opt/{APP}/.fabship/audit.log")
