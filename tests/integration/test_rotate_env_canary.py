"""Secret canary: rotate with values carrying unique markers, at the highest
verbosity (-vv streams every remote command's output), on the success path,
the health-failure path, a dry run with --show-hashes and a refused file.
While fab runs, a separate SSH connection polls `ps -eo args` on the host.

Then the markers must appear nowhere: stdout, stderr, run records, the host's
audit log, the captured ps output, the journal, or any file a non-root user
can read on the host. Positive controls prove each search can find a marker.
"""
import base64
import os
import uuid

from canary_support import PsPoller, with_decoded
from test_rotate_env_support import (  # noqa: F401  (rot_app is a fixture)
    APP, ENV_PATH, HOST, env_file, health_status, host_run, must, rot_app, rotate, write_inventory,
)

READABLE_DIRS = "/etc /opt /tmp /var/tmp /var/log /var/lib /home /root /run /srv"


def markers(n=4):
    return [f"CNRY{uuid.uuid4().hex[:20]}" for _ in range(n)]


def test_secret_canary(rot_app, tmp_path):
    inv = write_inventory(tmp_path)
    ok_m = markers()
    bad_m = markers()
    dry_m = markers()
    refused_m = markers()
    good = env_file(tmp_path, (f"APP_SECRET=s3cret-{ok_m[0]}\nAPI_TOKEN='{ok_m[1]} with space'\n"
                               f"DB_URL=postgres://app:{ok_m[2]}@db:5432/app\nLOG_LEVEL=debug\n"), "good.env")
    failing = env_file(tmp_path, (f"APP_SECRET=s3cret-{bad_m[0]}\nAPI_TOKEN=\"{bad_m[1]}\\nline2\"\n"
                                  f"DB_URL=postgres://app:{bad_m[2]}@db/app\nFAIL_HEALTH=1\n"), "failing.env")
    dry = env_file(tmp_path, f"APP_SECRET=s3cret-{dry_m[0]}\nAPI_TOKEN={dry_m[1]}\n", "dry.env")
    refused = env_file(tmp_path, f"APP_SECRET=s3cret-{refused_m[0]}\nDB_URL=not-a-url-{refused_m[1]}\n",
                       "refused.env")
    since = must(rot_app, "date '+%Y-%m-%d %H:%M:%S'").strip()

    results = []
    with PsPoller(rot_app, HOST, 0.02) as ps:
        results.append(rotate(tmp_path, inv, "-vv", "--show-hashes", "--env-file", str(good)))
        assert results[-1].returncode == 0, results[-1].stdout + results[-1].stderr
        results.append(rotate(tmp_path, inv, "-vv", "--show-hashes", "--env-file", str(failing)))
        assert results[-1].returncode != 0, results[-1].stdout
        results.append(rotate(tmp_path, inv, "-vv", "--dry-run", "--show-hashes", "--env-file", str(dry)))
        assert results[-1].returncode == 0, results[-1].stdout + results[-1].stderr
        results.append(rotate(tmp_path, inv, "-vv", "--env-file", str(refused)))
        assert results[-1].returncode == 2, results[-1].stdout + results[-1].stderr

    # the runs did what they claim (so the searches below are meaningful)
    assert health_status(rot_app) == "200"
    assert must(rot_app, f"grep -c {ok_m[0]} {ENV_PATH}").strip() == "1"   # positive control: root can see it
    assert "would change" in results[2].stdout and "rotate-env failed" in results[1].stdout + results[1].stderr
    assert ps.text.count("@@snap") > 20, "the ps poller captured too little to mean anything"
    assert ok_m[0] in with_decoded(base64.b64encode(f"x{ok_m[0]}".encode()).decode())
    assert "sh -c" in ps.text  # fab's remote scripts were caught by the poller

    every = ok_m + bad_m + dry_m + refused_m
    output = "\n".join(r.stdout + "\n" + r.stderr for r in results)
    if "@@fabship-fact@@ os" in output:  # the gate's probes stream base64 frames at -vv: decoded here
        assert "PRETTY_NAME" in with_decoded(output)
    records = "\n".join(p.read_text() for p in (tmp_path / "runs").glob("*.json"))
    assert records, "no run records were written"
    audit = must(rot_app, f"cat /opt/{APP}/.fabship/audit.log")
    journal = host_run(rot_app, f"journalctl --no-pager -o cat --since '{since}'")[1]
    assert journal.strip(), "journal empty: cannot be searched"
    found = {}
    for name, text in (("output", output), ("run records", records), ("audit log", audit), ("ps", ps.text),
                       ("journal", journal)):
        text = with_decoded(text)
        hits = [m for m in every if m in text]
        if hits:
            found[name] = hits
    # files readable by a non-root user, anywhere they could have landed
    pattern = "\\|".join(every)
    code, out, _ = host_run(rot_app, f"runuser -u nobody -- grep -rl -e '{pattern}' {READABLE_DIRS} 2>/dev/null")
    if out.strip():
        found["files readable by nobody"] = out.split()
    # positive control for that search: a world-readable file with a marker is found
    must(rot_app, f"echo {ok_m[3]} > /var/tmp/canary-control && chmod 0644 /var/tmp/canary-control")
    try:
        code, out, _ = host_run(rot_app, f"runuser -u nobody -- grep -rl -e '{ok_m[3]}' {READABLE_DIRS} 2>/dev/null")
        assert "/var/tmp/canary-control" in out, "the non-root search cannot find a readable marker"
    finally:
        must(rot_app, "rm -f /var/tmp/canary-control")
    assert not found, f"secret markers leaked: {found}"
    # the local control machine: no file others can read holds a marker either
    for p in (tmp_path / "runs").glob("*.json"):
        assert oct(os.stat(p).st_mode & 0o077) == "0o0", f"{p} is readable by others"
