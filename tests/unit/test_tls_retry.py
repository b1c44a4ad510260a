"""certbot is run again only for transient ACME errors (Pebble rejects 5% of
nonces by default; Let's Encrypt has hiccups), never for a failed validation."""
import subprocess

from tasks.resources import tls
from tasks.core.commands import Cmd


def fake_certbot(tmp_path, outcomes):
    """A stand-in that plays `outcomes` in turn: (exit code, log line); like
    certbot with its own log rotation, each run starts a new log."""
    counter, log = tmp_path / "n", tmp_path / "letsencrypt.log"
    cases = "\n".join(f"  {i}) mv -f {log} {log}.1 2>/dev/null; echo {line!r} > {log}; echo attempt{i}; exit {code};;"
                      for i, (code, line) in enumerate(outcomes, 1))
    script = (f"n=$(cat {counter} 2>/dev/null || echo 0); n=$((n + 1)); echo $n > {counter}\n"
              f"case $n in\n{cases}\nesac")
    return Cmd("sh", "-c", script), counter, log


def run(cmd, log, monkeypatch):
    monkeypatch.setattr(tls, "CERTBOT_LOG", str(log))
    monkeypatch.setattr(tls, "RETRY_PAUSE", 0)
    return subprocess.run(tls.with_acme_retries(cmd).parts, capture_output=True, text=True)


def test_bad_nonce_is_retried(tmp_path, monkeypatch):
    cmd, counter, log = fake_certbot(tmp_path, [(1, "urn:ietf:params:acme:error:badNonce"),
                                                (1, "urn:ietf:params:acme:error:badNonce"), (0, "ok")])
    r = run(cmd, log, monkeypatch)
    assert r.returncode == 0 and r.stdout == "attempt3\n"
    assert counter.read_text().strip() == "3"


def test_failed_validation_is_not_retried(tmp_path, monkeypatch):
    cmd, counter, log = fake_certbot(tmp_path, [(1, "urn:ietf:params:acme:error:unauthorized"), (0, "ok")])
    r = run(cmd, log, monkeypatch)
    assert r.returncode == 1 and "attempt1" in r.stderr
    assert counter.read_text().strip() == "1"


def test_gives_up_after_five_attempts(tmp_path, monkeypatch):
    cmd, counter, log = fake_certbot(tmp_path, [(1, "urn:ietf:params:acme:error:badNonce")] * 6)
    r = run(cmd, log, monkeypatch)
    assert r.returncode == 1
    assert counter.read_text().strip() == "5"


def test_four_crashes_in_a_row_still_end_in_a_certificate(tmp_path, monkeypatch):
    """What a CA rejecting a fifth of nonces does to Debian's certbot (two in a
    row: "AttributeError: can't set attribute"): the fifth attempt gets it."""
    cmd, counter, log = fake_certbot(tmp_path, [(1, "urn:ietf:params:acme:error:badNonce")] * 4 + [(0, "ok")])
    r = run(cmd, log, monkeypatch)
    assert r.returncode == 0 and r.stdout == "attempt5\n"


def appending_certbot(tmp_path, outcomes, history=""):
    """Like Debian's certbot (max-log-backups = 0): every run appends to one log."""
    counter, log = tmp_path / "n", tmp_path / "letsencrypt.log"
    log.write_text(history)
    cases = "\n".join(f"  {i}) printf '%s\\n' {' '.join(repr(x) for x in lines)} >> {log}; echo attempt{i}; "
                      f"exit {code};;" for i, (code, lines) in enumerate(outcomes, 1))
    script = (f"n=$(cat {counter} 2>/dev/null || echo 0); n=$((n + 1)); echo $n > {counter}\n"
              f"case $n in\n{cases}\nesac")
    return Cmd("sh", "-c", script), counter, log


def test_an_earlier_runs_bad_nonce_in_the_log_does_not_make_a_failed_validation_transient(tmp_path, monkeypatch):
    cmd, counter, log = appending_certbot(
        tmp_path, [(1, ["urn:ietf:params:acme:error:unauthorized"]), (0, ["ok"])],
        history="old run\nurn:ietf:params:acme:error:badNonce\n")
    r = run(cmd, log, monkeypatch)
    assert r.returncode == 1 and counter.read_text().strip() == "1"


def test_a_bad_nonce_certbot_retried_itself_before_an_unknown_account_is_not_transient(tmp_path, monkeypatch):
    cmd, counter, log = appending_certbot(tmp_path, [
        (1, ["urn:ietf:params:acme:error:badNonce", "urn:ietf:params:acme:error:accountDoesNotExist"]), (0, ["ok"])])
    r = run(cmd, log, monkeypatch)
    assert r.returncode == 1 and counter.read_text().strip() == "1"


def test_appended_bad_nonces_are_retried(tmp_path, monkeypatch):
    cmd, counter, log = appending_certbot(tmp_path, [
        (1, ["urn:ietf:params:acme:error:badNonce"]), (1, ["x", "urn:ietf:params:acme:error:serverInternal"]),
        (0, ["ok"])], history="urn:ietf:params:acme:error:unauthorized\n")
    r = run(cmd, log, monkeypatch)
    assert r.returncode == 0 and r.stdout == "attempt3\n"
