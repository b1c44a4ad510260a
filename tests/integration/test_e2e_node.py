"""The README's first command on h8: the generic Node sample (apps/node-app)
with inventories/sandbox-node.yaml: bootstrap + deploy + verify, then
rotate-env and rollback, blue/green behind nginx with a Pebble certificate."""
import hashlib
import re
import secrets

from test_e2e_support import DOMAIN, INV, Flow, app_copy, env_file, h8  # noqa: F401

APP = "node-app"
ENV_PATH = f"/etc/{APP}/{APP}.env"
SAMPLE_ENV = INV / "sandbox-env" / "node-app.env"


def version(f: Flow) -> str:
    status, _, body = f.https("/version")
    assert status == 200, f"/version through nginx: {status} {body[:200]}"
    return body.strip()


def live_port(f: Flow) -> int:
    text = f.must(f"cat /etc/nginx/fabship/{APP}-upstream.conf")
    m = re.search(r"server 127\.0\.0\.1:(\d+)", text)
    assert m, text
    return int(m.group(1))


def test_node_app_end_to_end(h8, tmp_path):  # noqa: F811
    f = Flow(h8, tmp_path, "sandbox-node")

    f.fab("bootstrap")
    assert f.stat(ENV_PATH) == f"root:{APP}:600"
    f.must(f"test -f /etc/systemd/system/{APP}@.service")
    cert = f.must(f"echo | openssl s_client -connect 127.0.0.1:443 -servername {DOMAIN} 2>/dev/null "
                  "| openssl x509 -noout -issuer -ext subjectAltName")
    assert "Pebble" in cert and DOMAIN in cert, cert
    f.fab("bootstrap")
    assert f.changed_steps("bootstrap") == [], "a second bootstrap changed something"

    # deploy: new instance beside the old, health-checked, nginx switched
    f.fab("deploy", "--artifact", str(app_copy(tmp_path, APP, "1.0.0")))
    v1, p1 = f.current_release(APP), live_port(f)
    assert version(f) == "1.0.0" and p1 in (3001, 3002)
    f.must(f"systemctl is-active -q {APP}@{p1}.service")
    f.fab("deploy", "--artifact", str(app_copy(tmp_path, APP, "2.0.0")))
    v2, p2 = f.current_release(APP), live_port(f)
    assert version(f) == "2.0.0" and p2 != p1 and v2 != v1
    f.wait_for(f"old instance {APP}@{p1} stopped",
               lambda: f.sh(f"systemctl is-active -q {APP}@{p1}.service")[0] != 0)

    # a broken release never takes traffic
    r = f.fab("deploy", "--artifact", str(app_copy(tmp_path, APP, "3.0.0", fail_health=True)),
              "--set", "health.retries=5", expect=1)
    assert "health" in (r.stdout + r.stderr).lower()
    assert version(f) == "2.0.0" and live_port(f) == p2 and f.current_release(APP) == v2

    # rotate-env: contract refusal, then a new secret reaches the live process
    before = f.sha(ENV_PATH)
    r = f.fab("rotate-env", "--env-file", str(env_file(tmp_path, SAMPLE_ENV, "bad.env", APP_SECRET="short")),
              expect=2)
    assert "APP_SECRET is shorter than min_length 16" in r.stderr and f.sha(ENV_PATH) == before
    new_secret = "rotated-" + secrets.token_hex(12)
    r = f.fab("rotate-env", "--env-file", str(env_file(tmp_path, SAMPLE_ENV, "new.env", APP_SECRET=new_secret)))
    assert new_secret not in r.stdout + r.stderr
    assert f.sha(ENV_PATH) != before and f.stat(ENV_PATH) == f"root:{APP}:600"
    pid = f.unit_prop(f"{APP}@{live_port(f)}.service", "MainPID")
    got = f.must(f"tr '\\0' '\\n' < /proc/{pid}/environ | grep '^APP_SECRET=' | cut -d= -f2- | tr -d '\\n' "
                 "| sha256sum | cut -d' ' -f1").strip()
    assert got == hashlib.sha256(new_secret.encode()).hexdigest(), "the live process does not run with the new env"
    assert version(f) == "2.0.0"

    f.fab("rollback")
    assert f.current_release(APP) == v1 and version(f) == "1.0.0"

    r = f.fab("verify")
    assert f.host_result("verify")["result"] in ("ok", "passed"), r.stdout
    assert "home_https" in r.stdout
