"""Secret canary for `fab verify -vv` and `fab diagnose -vv` (-vv streamed every remote
command's output, base64 frames included, before any masking).

On h6 a tiny Node app (its own name and port, installed here) logs its secrets into
its journal at start and on every request (`APP_SECRET=...`, `Authorization: Bearer
...`, and a `session_key=...` that is in no env file: only diagnose's KEY=VALUE masking
hides it), answers /health only when the health header carries its token, and answers
/fail with 500 and a body holding the secrets. verify runs the health check (its
header from health.headers) and an HTTP check on /fail with an Authorization header
whose token is in no env file; while both tasks run, a separate SSH connection polls
`ps -eo args` on the host.

Then no marker may appear in stdout/stderr (base64 tokens decoded too), the run
records, or the captured ps output; the positive controls prove the journal held
them, the app got the health header (health passed) and the poller saw fab's scripts.
"""
import uuid

import pytest
import yaml
from canary_support import PsPoller, with_decoded
from fab_cli import run_fab
from test_rotate_env_support import REPO, host_run

HOST = "h6"
APP = "vvcanary"
PORT = 3171
ENV_PATH = f"/etc/{APP}/{APP}.env"

SERVER_JS = r"""
'use strict';
const http = require('http');
const env = process.env;
const sessionKey = (env.APP_SECRET || '').split('').reverse().join('');
function leak(tag) {
  // a careless app: secrets in its log lines
  console.log(`${tag} APP_SECRET=${env.APP_SECRET} session_key=${sessionKey}`);
  console.log(`${tag} Authorization: Bearer ${env.API_TOKEN}`);
}
leak('start');
http.createServer((req, res) => {
  leak(`${req.method} ${req.url}`);
  if (req.url === '/health') {
    const ok = req.headers['x-health-token'] === env.HEALTH_TOKEN;
    res.writeHead(ok ? 200 : 401, {'content-type': 'application/json'});
    return res.end(JSON.stringify({status: ok ? 'ok' : 'no token'}));
  }
  res.writeHead(500, {'content-type': 'application/json'});
  res.end(JSON.stringify({error: 'boom', APP_SECRET: env.APP_SECRET, echo: `token ${env.API_TOKEN}`,
                          note: `session_key=${sessionKey}`, auth: req.headers['authorization'] || ''}));
}).listen(parseInt(env.PORT, 10), '127.0.0.1');
"""

UNIT = f"""[Unit]
Description=fabship -vv canary app

[Service]
User={APP}
WorkingDirectory=/opt/{APP}/current
EnvironmentFile={ENV_PATH}
ExecStart=/usr/bin/env PORT={PORT} /usr/bin/node server.js
Restart=on-failure

[Install]
WantedBy=multi-user.target
"""


def must(fleet, cmd, stdin=None):
    code, out, err = host_run(fleet, cmd, stdin)
    assert code == 0, f"{cmd!r} failed ({code}): {err or out}"
    return out


def marker():
    return f"CNRY{uuid.uuid4().hex[:20]}"


@pytest.fixture
def canary_app(sandbox_fleet, tmp_path):
    if HOST not in [h.name for h in sandbox_fleet.hosts]:
        pytest.skip(f"the sandbox fleet has no {HOST}")
    m = {k: marker() for k in ("secret", "token", "health", "header")}
    env_text = f"APP_SECRET=s3cret-{m['secret']}\nAPI_TOKEN={m['token']}\nHEALTH_TOKEN={m['health']}\n"
    src = tmp_path / "canary.env"
    src.write_text(env_text)
    src.chmod(0o600)
    fleet = sandbox_fleet
    must(fleet, "command -v node >/dev/null || { apt-get update -q >/dev/null && "
                "DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs >/dev/null; }")
    must(fleet, f"""set -e
        systemctl stop {APP}.service 2>/dev/null || true
        rm -rf /opt/{APP} /etc/{APP}
        id -u {APP} >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin {APP}
        install -d -m 0755 /opt/{APP} /opt/{APP}/releases/r1
        install -d -m 0750 -o root -g {APP} /etc/{APP}
        ln -sfn releases/r1 /opt/{APP}/current""")
    must(fleet, f"cat > /opt/{APP}/releases/r1/server.js", SERVER_JS.encode())
    must(fleet, f"umask 077; cat > {ENV_PATH} && chown root:{APP} {ENV_PATH}", env_text.encode())
    must(fleet, f"cat > /etc/systemd/system/{APP}.service && systemctl daemon-reload && "
                f"systemctl restart {APP}.service", UNIT.encode())
    must(fleet, f"for i in $(seq 40); do curl -s -o /dev/null -H 'X-Health-Token: {m['health']}' "
                f"http://127.0.0.1:{PORT}/health && exit 0; sleep 0.25; done; exit 1")
    inv = tmp_path / "vv.yaml"
    inv.write_text(yaml.safe_dump({
        "include": [str(REPO / "inventories" / "sandbox.yaml")],
        "app": {"name": APP, "kind": "node", "port": PORT},
        "deploy": {"source": "artifact", "artifact": str(tmp_path), "strategy": "restart"},
        "nginx": {"enabled": False},
        "health": {"path": "/health", "port": PORT, "retries": 3, "interval": 0.5, "timeout": 2,
                   "headers": {"X-Health-Token": m["health"]}},
        "env": {"source": {"type": "file", "file": str(src)},
                "contract": {"required": ["APP_SECRET", "API_TOKEN", "HEALTH_TOKEN"]}},
        "verify": {"checks": [{"name": "leak", "path": "/fail",
                               "headers": {"Authorization": f"Bearer {m['header']}"}}]},
    }, sort_keys=False))
    yield fleet, inv, m
    host_run(fleet, f"systemctl stop {APP}.service; rm -f /etc/systemd/system/{APP}.service; "
                    f"systemctl daemon-reload; rm -rf /opt/{APP} /etc/{APP}")


def test_verify_and_diagnose_at_vv_leak_nothing(canary_app, tmp_path):
    fleet, inv, m = canary_app
    runs = tmp_path / "runs"
    since = must(fleet, "date '+%Y-%m-%d %H:%M:%S'").strip()
    with PsPoller(fleet, HOST, 0.02) as ps:
        v = run_fab("verify", "-i", str(inv), "--limit", HOST, "-vv", "--only", "health,http:leak", runs_dir=runs)
        d = run_fab("diagnose", "-i", str(inv), "--limit", HOST, "-vv", "--lines", "50", runs_dir=runs)
    out_v, out_d = v.stdout + v.stderr, d.stdout + d.stderr
    # the runs did what they claim: health passed (the header reached the app), the leak check failed
    assert v.returncode == 1, out_v
    assert "http:leak" in out_v and "answered 500, expected 200" in out_v, out_v
    assert "[headers: Authorization]" in out_v
    assert d.returncode == 0, out_d
    assert "journalctl" in out_d and "session_key=***" in out_d, out_d
    rec = "\n".join(p.read_text() for p in runs.glob("*.json"))
    assert rec.count('"task": "verify"') == 1 and rec.count('"task": "diagnose"') == 1
    # positive controls: the journal really holds the secrets, the poller saw fab's scripts
    journal = host_run(fleet, f"journalctl --no-pager -o cat -u {APP}.service --since '{since}'")[1]
    reversed_secret = f"s3cret-{m['secret']}"[::-1]
    assert m["secret"] in journal and m["token"] in journal and reversed_secret in journal
    assert "sh -c" in ps.text and ps.text.count("@@snap") > 20
    every = list(m.values()) + [reversed_secret]
    found = {}
    for name, text in (("verify output", out_v), ("diagnose output", out_d), ("run records", rec),
                       ("ps", ps.text)):
        hits = [x for x in every if x in with_decoded(text)]
        if hits:
            found[name] = hits
    assert not found, f"secret markers leaked: {found}"
