"""`fab rotate-env` on a real host (h6): refused input changes nothing, a good
file lands atomically with the right owner/mode and the app restarts healthy,
a file that breaks the health check is rolled back, dry-run changes nothing,
the lock is honoured, and Secrets Manager / SSM sources work against moto."""
import json
import re

import boto3
import pytest

from test_rotate_env_support import (  # noqa: F401  (rot_app is a fixture)
    APP, ENV_PATH, GOOD_SECRET, HOST, RID, env_file, file_sha, health_status, host_run, main_pid, must, rot_app,
    rotate, sha256, stat, write_inventory,
)

NEW_SECRET = "rotated-secret-abcdef0123456789"


def test_missing_required_key_refused_nothing_changed(rot_app, tmp_path):
    before, pid = file_sha(rot_app), main_pid(rot_app)
    r = rotate(tmp_path, write_inventory(tmp_path), "--env-file", str(env_file(tmp_path, "LOG_LEVEL=debug\n")))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "required key missing: APP_SECRET" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert file_sha(rot_app) == before and main_pid(rot_app) == pid


def test_short_secret_refused(rot_app, tmp_path):
    before = file_sha(rot_app)
    r = rotate(tmp_path, write_inventory(tmp_path), "--env-file", str(env_file(tmp_path, "APP_SECRET=short\n")))
    assert r.returncode == 2
    assert "APP_SECRET is shorter than min_length 16" in r.stderr
    assert "short\n" not in r.stdout and "=short" not in r.stderr
    assert file_sha(rot_app) == before


def test_dry_run_shows_key_diff_and_changes_nothing(rot_app, tmp_path):
    before, pid = file_sha(rot_app), main_pid(rot_app)
    f = env_file(tmp_path, f"APP_SECRET={NEW_SECRET}\nDB_URL=postgres://db/app\n")
    r = rotate(tmp_path, write_inventory(tmp_path), "--env-file", str(f), "--dry-run", "--show-hashes")
    assert r.returncode == 0, r.stdout + r.stderr
    line = next(ln for ln in r.stdout.splitlines() if "env keys:" in ln)
    m = re.search(r"changed APP_SECRET \(([0-9a-f]{8}) -> ([0-9a-f]{8})\)", line)
    assert m and m.groups() == (sha256(GOOD_SECRET)[:8], sha256(NEW_SECRET)[:8]), line
    assert "added DB_URL" in line and "removed LOG_LEVEL" in line
    assert NEW_SECRET not in r.stdout + r.stderr and GOOD_SECRET not in r.stdout + r.stderr
    assert file_sha(rot_app) == before and main_pid(rot_app) == pid
    assert host_run(rot_app, f"test -e {ENV_PATH}.prev")[0] != 0


def test_good_file_applied_restarted_healthy(rot_app, tmp_path):
    old_sha, pid = file_sha(rot_app), main_pid(rot_app)
    inv = write_inventory(tmp_path)
    r = rotate(tmp_path, inv, "--env-file", str(env_file(tmp_path, f"APP_SECRET={NEW_SECRET}\nLOG_LEVEL=debug\n")))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "changed APP_SECRET, LOG_LEVEL" in r.stdout
    assert stat(rot_app) == f"root:{APP}:600"
    assert must(rot_app, f"cat {ENV_PATH}").endswith(f"APP_SECRET={NEW_SECRET}\nLOG_LEVEL=debug\n")
    assert main_pid(rot_app) != pid and health_status(rot_app) == "200"
    # the running process has the new value (read by root from /proc, compared by hash on the host)
    env_hash = must(rot_app, f"tr '\\0' '\\n' < /proc/{main_pid(rot_app)}/environ | grep '^APP_SECRET=' | "
                             "cut -d= -f2- | tr -d '\\n' | sha256sum | cut -d' ' -f1").strip()
    assert env_hash == sha256(NEW_SECRET)
    # previous version kept beside it, 0600; no temp file left behind
    assert file_sha(rot_app, f"{ENV_PATH}.prev") == old_sha and stat(rot_app, f"{ENV_PATH}.prev").endswith(":600")
    assert must(rot_app, f"ls -A /etc/{APP}").split() == [f"{APP}.env", f"{APP}.env.prev"]
    # the release records the env it runs with (rollback restores it), root-only
    snap = f"/opt/{APP}/.fabship/env/{RID}.env"
    assert file_sha(rot_app, snap) == file_sha(rot_app) and stat(rot_app, snap) == "root:root:600"
    audit = must(rot_app, f"tail -n 1 /opt/{APP}/.fabship/audit.log")
    assert "action=rotate-env" in audit and "result=ok" in audit and f"release={RID}" in audit
    # run again: nothing to do, no restart
    pid2 = main_pid(rot_app)
    r = rotate(tmp_path, inv, "--env-file", str(tmp_path / "new.env"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "unchanged" in r.stdout
    assert main_pid(rot_app) == pid2
    # the lock is released
    assert host_run(rot_app, f"test -d /opt/{APP}/.fabship/lock")[0] != 0


def test_failing_health_restores_previous_env(rot_app, tmp_path):
    old_sha = file_sha(rot_app)
    f = env_file(tmp_path, f"APP_SECRET={NEW_SECRET}\nFAIL_HEALTH=1\n")
    r = rotate(tmp_path, write_inventory(tmp_path), "--env-file", str(f))
    assert r.returncode != 0, r.stdout + r.stderr
    out = r.stdout + r.stderr
    assert "rotate-env failed" in out and "health check" in out and "previous env file is back" in out
    assert file_sha(rot_app) == old_sha and stat(rot_app) == f"root:{APP}:600"
    assert health_status(rot_app) == "200"
    audit = must(rot_app, f"tail -n 1 /opt/{APP}/.fabship/audit.log")
    assert "result=failed" in audit
    assert host_run(rot_app, f"test -d /opt/{APP}/.fabship/lock")[0] != 0
    rec = json.loads(sorted((tmp_path / "runs").glob("*rotate-env*.json"))[-1].read_text())
    assert rec["hosts"][HOST]["result"] == "failed"


def test_lock_held_refuses(rot_app, tmp_path):
    before = file_sha(rot_app)
    must(rot_app, f"install -d -m 0750 /opt/{APP}/.fabship && mkdir /opt/{APP}/.fabship/lock && "
                  f"echo '{{\"user\": \"alice@ci\", \"pid\": 1, \"control_host\": \"elsewhere\", "
                  f"\"epoch\": '$(date +%s)', \"action\": \"deploy\", \"time\": \"now\"}}' "
                  f"> /opt/{APP}/.fabship/lock/holder.json")
    try:
        r = rotate(tmp_path, write_inventory(tmp_path), "--env-file",
                   str(env_file(tmp_path, f"APP_SECRET={NEW_SECRET}\n")))
        assert r.returncode != 0
        assert "deploy lock held by alice@ci" in r.stdout + r.stderr
        assert file_sha(rot_app) == before
    finally:
        must(rot_app, f"rm -rf /opt/{APP}/.fabship/lock")


# -- AWS sources through moto's HTTP server --------------------------------------------

@pytest.fixture
def moto(monkeypatch):
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_CONFIG_FILE": "/dev/null",
           "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}
    yield url, env
    server.stop()


def _client(svc, url, env):
    return boto3.client(svc, region_name="eu-west-1", endpoint_url=url, aws_access_key_id="testing",
                        aws_secret_access_key="testing")


def test_rotate_from_secrets_manager(rot_app, tmp_path, moto):
    url, env = moto
    sm_secret = "from-secrets-manager-0123456789"
    _client("secretsmanager", url, env).create_secret(
        Name="rotdemo/test", SecretString=json.dumps({"APP_SECRET": sm_secret, "LOG_LEVEL": "info"}))
    inv = write_inventory(tmp_path, {"source": {"type": "secretsmanager", "secret_id": "rotdemo/test",
                                                "region": "eu-west-1", "endpoint_url": url}})
    r = rotate(tmp_path, inv, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "secretsmanager:rotdemo/test" in r.stdout
    assert must(rot_app, f"grep ^APP_SECRET= {ENV_PATH}").strip() == f"APP_SECRET={sm_secret}"
    assert health_status(rot_app) == "200" and sm_secret not in r.stdout + r.stderr


def test_rotate_from_ssm_path(rot_app, tmp_path, moto):
    url, env = moto
    ssm = _client("ssm", url, env)
    ssm_secret = "from-ssm-parameter-store-987654"
    ssm.put_parameter(Name="/rotdemo/test/APP_SECRET", Value=ssm_secret, Type="SecureString")
    ssm.put_parameter(Name="/rotdemo/test/DB_URL", Value="postgres://db:5432/rot", Type="String")
    inv = write_inventory(tmp_path, {"source": {"type": "ssm", "path": "/rotdemo/test", "region": "eu-west-1",
                                                "endpoint_url": url}})
    r = rotate(tmp_path, inv, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    body = must(rot_app, f"cat {ENV_PATH}")
    assert f"APP_SECRET={ssm_secret}\n" in body and "DB_URL=postgres://db:5432/rot\n" in body
    assert "LOG_LEVEL" not in body
    assert health_status(rot_app) == "200" and ssm_secret not in r.stdout + r.stderr


def test_secrets_manager_missing_secret_is_one_line(rot_app, tmp_path, moto):
    url, env = moto
    before = file_sha(rot_app)
    inv = write_inventory(tmp_path, {"source": {"type": "secretsmanager", "secret_id": "rotdemo/none",
                                                "region": "eu-west-1", "endpoint_url": url}})
    r = rotate(tmp_path, inv, env=env)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip() == f"fabship: {inv}: env.source.secret_id: secret 'rotdemo/none' not found"
    assert file_sha(rot_app) == before


def test_utf8_value_round_trips(rot_app, tmp_path):
    value = "utf8-secret-caf\u00e9-\u00fc\u00f1-0123456789"
    r = rotate(tmp_path, write_inventory(tmp_path), "--env-file",
               str(env_file(tmp_path, f"APP_SECRET={value}\nLOG_LEVEL=info\n")))
    assert r.returncode == 0, r.stdout + r.stderr
    assert must(rot_app, f"grep ^APP_SECRET= {ENV_PATH}").strip() == f"APP_SECRET={value}"
