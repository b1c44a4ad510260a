"""tasks/release/health.py: the on-host curl loop, run locally against a real HTTP
server on loopback: statuses, body match, retries, early stop when the
process died, headers kept off the command line."""
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tasks.release.health import HealthSpec, check_health, health_cmd, headers_stdin, parse_health

from .localctx import LocalCtx, load_inv


class App:
    """A tiny app whose health answer the test controls."""

    def __init__(self):
        self.status, self.body, self.seen_headers, self.hits = 200, b'{"status":"ok"}', [], 0
        app = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self):
                app.hits += 1
                app.seen_headers.append(dict(self.headers))
                self.send_response(app.status)
                self.send_header("content-length", str(len(app.body)))
                self.end_headers()
                self.wfile.write(app.body)

            do_POST = do_GET

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def close(self):
        self.server.shutdown()


@pytest.fixture
def app():
    a = App()
    yield a
    a.close()


def spec(**kw):
    base = dict(path="/health", timeout=2, interval=0.1, retries=3)
    base.update(kw)
    return HealthSpec(**base)


def test_healthy(tmp_path, app):
    ctx = LocalCtx(load_inv(tmp_path))
    r = check_health(ctx, app.port, spec=spec(body_contains='"status":"ok"'))
    assert r.ok and r.status == 200 and r.attempts == 1 and '"ok"' in r.body_snippet
    assert r.url == f"http://127.0.0.1:{app.port}/health"


def test_wrong_status_retries_then_reports_last_response(tmp_path, app):
    app.status, app.body = 503, b'{"status":"fail","reason":"FAIL_HEALTH switch"}' + b"x" * 1000
    ctx = LocalCtx(load_inv(tmp_path))
    r = check_health(ctx, app.port, spec=spec(retries=4))
    assert not r.ok and r.status == 503 and r.attempts == 4 and app.hits == 4
    assert r.body_snippet.startswith('{"status":"fail"') and len(r.body_snippet) <= 500
    assert "HTTP 503" in r.describe() and "FAIL_HEALTH" in r.report()


def test_body_must_match(tmp_path, app):
    app.body = b'{"status":"degraded"}'
    r = check_health(LocalCtx(load_inv(tmp_path)), app.port, spec=spec(body_contains='"status":"ok"', retries=2))
    assert not r.ok and r.status == 200


def test_becomes_healthy_within_retries(tmp_path, app):
    app.status = 503
    threading.Timer(0.35, lambda: setattr(app, "status", 200)).start()
    r = check_health(LocalCtx(load_inv(tmp_path)), app.port, spec=spec(retries=30))
    assert r.ok and 2 <= r.attempts < 30


def test_connection_refused(tmp_path):
    r = check_health(LocalCtx(load_inv(tmp_path)), 1, spec=spec(retries=2))
    assert not r.ok and r.status is None and r.attempts == 2
    assert "onnect" in r.error or "refused" in r.error.lower()


def test_dead_process_stops_early(tmp_path):
    t0 = time.monotonic()
    r = check_health(LocalCtx(load_inv(tmp_path)), 1, spec=spec(retries=50, interval=0.5), dead_if="true")
    assert not r.ok and r.died and r.attempts == 1
    assert time.monotonic() - t0 < 5
    assert "process died" in r.describe()


def test_headers_travel_on_stdin(tmp_path, app):
    s = spec(headers={"Authorization": "Bearer s3cr3t-token", "X-Probe": "fabship"}, method="POST")
    cmd = health_cmd(s, app.port)
    assert "s3cr3t-token" not in cmd.render()  # not visible in ps on the host
    assert headers_stdin(s) == "Authorization: Bearer s3cr3t-token\nX-Probe: fabship\n"
    r = check_health(LocalCtx(load_inv(tmp_path)), app.port, spec=s)
    assert r.ok
    assert app.seen_headers[-1]["Authorization"] == "Bearer s3cr3t-token"


def test_spec_from_inventory(tmp_path):
    inv = load_inv(tmp_path, {"health": {"path": "/healthz", "retries": 7, "expect_status": 204}})
    s = HealthSpec.from_inventory(inv)
    assert (s.path, s.retries, s.expect_status, s.timeout) == ("/healthz", 7, 204, 5)
    cmd = health_cmd(s, 3001).render()
    assert "http://127.0.0.1:3001/healthz" in cmd and "-lt 7" in cmd and '[ "$code" = 204 ]' in cmd


def test_parse_garbage():
    r = parse_health("bash: curl: not found\n", "http://x")
    assert not r.ok and "did not run" in r.error


def test_dry_run_checks_nothing(tmp_path):
    ctx = LocalCtx(load_inv(tmp_path), dry_run=True)
    assert check_health(ctx, 1, spec=spec()).ok
    assert ctx.commands == []


def test_quick_polls_while_nothing_listens(tmp_path):
    """A process that starts listening 0.3 s in is seen within ~0.1 s, not at
    the next 1 s interval; refused polls still use up the retries on time."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    app_holder = {}
    from http.server import HTTPServer, SimpleHTTPRequestHandler

    class H(SimpleHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *a):
            pass

    def serve():
        time.sleep(0.3)
        srv = HTTPServer(("127.0.0.1", port), H)
        app_holder["srv"] = srv
        srv.serve_forever(poll_interval=0.02)

    threading.Thread(target=serve, daemon=True).start()
    t0 = time.monotonic()
    r = check_health(LocalCtx(load_inv(tmp_path)), port, spec=spec(interval=1, retries=5, path="/"))
    took = time.monotonic() - t0
    app_holder["srv"].shutdown()
    assert r.ok and took < 0.9, took
    t0 = time.monotonic()
    r = check_health(LocalCtx(load_inv(tmp_path)), 1, spec=spec(interval=0.5, retries=3))
    took = time.monotonic() - t0
    assert not r.ok and r.attempts == 3 and 1.0 <= took < 2.5, took


@pytest.mark.parametrize("how", ["SIGTERM", "SIGHUP", "reader gone (SIGPIPE)"])
def test_a_check_cut_short_leaves_no_temp_dir(how):
    """fab killed mid-check: the remote loop is signalled, or its channel is
    gone and the final echo dies of SIGPIPE. Its private temp dir goes too."""
    import glob
    import signal
    import subprocess

    before = set(glob.glob("/tmp/fabship-health.*"))
    cmd = health_cmd(spec(retries=40, interval=0.1, timeout=1), 1)   # port 1: refused, it keeps polling
    p = subprocess.Popen(cmd.parts, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 5
    while not set(glob.glob("/tmp/fabship-health.*")) - before:
        assert time.monotonic() < deadline, "the check made no temp dir"
        time.sleep(0.02)
    time.sleep(0.2)   # in the loop (a signal inside mktemp itself is out of reach of any trap)
    if how == "reader gone (SIGPIPE)":
        p.stdout.close()
    else:
        p.send_signal(getattr(signal, how))
    assert p.wait(timeout=30) != 0
    if p.stdout and not p.stdout.closed:
        p.stdout.close()
    assert not set(glob.glob("/tmp/fabship-health.*")) - before
