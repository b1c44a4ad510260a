"""fab diagnose on h7 (after test_verify's bootstrap + deploy of the node
sample, or on its own): per-host sections from one round trip, and no
secret value in the output, the report file or the run record even when the
host's logs contain them."""
from __future__ import annotations


import pytest

from test_verify import APP, HOST, REPO, SECRET, H7, app_copy, reset  # noqa: F401


@pytest.fixture(scope="module")
def h7d(sandbox_fleet, tmp_path_factory):
    if HOST not in [h.name for h in sandbox_fleet.hosts]:
        pytest.skip(f"the sandbox fleet has no {HOST} (run with FABSHIP_SANDBOX_COUNT=8)")
    h = H7(sandbox_fleet, tmp_path_factory.mktemp("diagnose-h7"))
    code, _, _ = sandbox_fleet.run(HOST, f"test -L /opt/{APP}/current && systemctl is-active -q nginx")
    if code != 0:
        reset(sandbox_fleet)
        h.fab("bootstrap")
        h.fab("deploy", "--artifact", str(app_copy(h.tmp, "1.0.0")))
    return h


def test_diagnose_sections_and_masking(h7d):
    audit = f"/opt/{APP}/.fabship/audit.log"
    h7d.must(f"cp -p {audit} /root/audit.bak 2>/dev/null || touch /root/audit.bak")
    # secrets where an operator's tools would show them: an app log line and the audit log
    h7d.must(f"printf '%s\\n' 'test APP_SECRET={SECRET}' 'test leaked {SECRET} raw' "
             f"'test db postgres://app:dbpass-77@db/x' >> {audit}")
    try:
        out_dir = h7d.tmp / "reports"
        r = h7d.fab("diagnose", "--lines", "30", "--out", str(out_dir))
        text = r.stdout
        for title in (f"===== {HOST} (", f"--- systemctl status {APP}@3001.service {APP}@3002.service",
                      f"--- journalctl -u {APP}@* -n 30", "--- nginx -t", "--- tail -n 30 /var/log/nginx/error.log",
                      "--- df -h", "--- free -m", "--- listening ports (ss -ltnp)", "--- current release",
                      "--- deploy lock", "--- last deploys (audit log)", "--- failed units"):
            assert title in text, f"missing section {title!r}:\n{text[-3000:]}"
        assert "Mem:" in text and ":443" in text and "syntax is ok" in text
        assert "test APP_SECRET=***" in text and "test leaked *** raw" in text
        assert "postgres://app:***@db/x" in text
        report = (out_dir / f"{HOST}.txt").read_text()
        for where in (text, r.stderr, report, *[p.read_text() for p in h7d.runs.glob("*-diagnose-*.json")]):
            assert SECRET not in where and "dbpass-77" not in where
        assert (out_dir / f"{HOST}.txt").stat().st_mode & 0o777 == 0o600
        rec = h7d.record("diagnose")["hosts"][HOST]
        assert rec["remote_commands"] == 1 and rec["result"] == "ok"
    finally:
        h7d.must(f"cp -p /root/audit.bak {audit}")
