"""Release hooks (tasks/release/hooks.py) and webhooks (tasks/release/notify.py):
schema, the commands as they run on a host (env read by systemd / docker, never
on a command line), the host-side mask run with the local sh and awk, once-hooks
across threads, and payloads posted to a real local HTTP server."""
from __future__ import annotations

import json
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import SimpleNamespace

import pytest

from tasks.config.app import Layout
from tasks.core.errors import ConfigError, StepFailed
from tasks.release import hooks as H
from tasks.release import notify as N
from tests.unit.localctx import LocalCtx, load_inv

SECRET = "s3cret-token-value-0123"


# -- schema ------------------------------------------------------------------------------------

def test_hook_lists_beside_alb(tmp_path):
    inv = load_inv(tmp_path, {"hooks": {"before_switch": ["bin/migrate", {"run": "npm run db:migrate", "once": True,
                                                                           "name": "migrate"}],
                                        "after_switch": ["echo done"]}})
    hs = H.hooks_for(inv, "before_switch")
    assert [h.run for h in hs] == ["bin/migrate", "npm run db:migrate"]
    assert (hs[0].once, hs[1].once, hs[1].name, hs[1].label) == (False, True, "migrate",
                                                                  "hooks.before_switch[1] (migrate)")
    assert H.hooks_for(inv, "before_build") == []
    assert H.all_hooks(inv) == {"before_switch": ["bin/migrate", "npm run db:migrate"], "after_switch": ["echo done"]}


def test_hook_typo_names_the_key(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_inv(tmp_path, {"hooks": {"before_switch": [{"run": "x", "onse": True}]}})
    assert "hooks.before_switch[0]" in str(e.value) and "onse" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_inv(tmp_path, {"hooks": {"after_deploy": ["x"]}})
    assert "after_deploy" in str(e.value)


def test_notify_url_never_echoed(tmp_path):
    bad = "htps://hooks.example.com/T000/B000/" + SECRET
    with pytest.raises(ConfigError) as e:
        load_inv(tmp_path, {"notify": [{"url": bad}]})
    assert "notify[0].url" in str(e.value) and SECRET not in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_inv(tmp_path, {"notify": [{"url": "https://x/" + SECRET, "url_env": "HOOK"}]})
    assert "exactly one of url" in str(e.value) and SECRET not in str(e.value)


def test_url_env_read_on_the_control_machine(tmp_path, monkeypatch):
    inv = load_inv(tmp_path, {"notify": [{"url_env": "FABSHIP_TEST_HOOK", "format": "slack"}]})
    monkeypatch.delenv("FABSHIP_TEST_HOOK", raising=False)
    with pytest.raises(ConfigError) as e:
        N.webhooks(inv)
    assert "notify[0].url_env" in str(e.value) and "not set" in str(e.value)
    monkeypatch.setenv("FABSHIP_TEST_HOOK", "https://hooks.example.com/" + SECRET)
    (w,) = N.webhooks(inv)
    assert w.format == "slack" and str(w.url) == "***" and w.url.reveal().endswith(SECRET)


# -- commands -----------------------------------------------------------------------------------

def test_systemd_hook_reads_the_env_file_itself(tmp_path):
    inv = load_inv(tmp_path, {"env": {"source": {"type": "file", "file": str(tmp_path / "x.env")}}})
    lay = Layout.from_inventory(inv)
    cmd = H.hook_cmd(inv, lay, H.Hook("before_switch", 0, "npm run migrate"), "20250101T000000Z-v1").render()
    assert f"--property=EnvironmentFile={lay.env_path}" in cmd   # no '-': the env file must be there
    assert f"--uid={lay.user}" in cmd and f"--gid={lay.group}" in cmd and "--pipe" in cmd and "--wait" in cmd
    assert lay.release_dir("20250101T000000Z-v1") in cmd and "npm run migrate" in cmd
    assert f"[ ! -f {lay.env_path} ]" in cmd and "exit 96" in cmd


def test_docker_hook_is_a_oneoff_container_of_the_image(tmp_path):
    inv = load_inv(tmp_path, {"app": {"kind": "docker", "start": None}, "deploy": {"source": "image"},
                              "docker": {"image": "shop", "run_args": ["--network", "host"]}})
    lay = Layout.from_inventory(inv)
    cmd = H.hook_cmd(inv, lay, H.Hook("before_switch", 0, "bin/migrate"), "R1", image="reg/shop:v2").render()
    assert "docker run --rm --env-file " + lay.env_path in cmd
    assert "--network host" in cmd and "-e FABSHIP_RELEASE=R1 -e FABSHIP_HOOK=before_switch" in cmd
    assert "reg/shop:v2 sh -c bin/migrate" in cmd
    assert "systemd-run" not in cmd


def _envfile(tmp_path, text: str) -> Layout:
    p = tmp_path / "app.env"
    p.write_text(text)
    return Layout(app="demo", kind="node", user="demo", group="demo", root=str(tmp_path), config_dir=str(tmp_path),
                  env_path=str(p), strategy="restart", port=1, ports=(), nginx=False)


def test_mask_filter_masks_secret_values_line_by_line(tmp_path):
    lay = _envfile(tmp_path, f'API_TOKEN="{SECRET} x"\nLOG_LEVEL=info\nDATABASE_URL=postgres://u:pw-1234@db/x\n'
                             f"LONG_THING=abcdefghijklmnopqrstuvwxyz\nSHORT_KEY=abc\n")
    script = H.mask_filter(lay)
    lines = f"token {SECRET} x here\nlevel info\nurl postgres://u:pw-1234@db/x\nlong abcdefghijklmnopqrstuvwxyz\n" \
            "json \"" + SECRET + " x\"\nshort abc\n"
    r = subprocess.run(["sh", "-c", script], input=lines, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["token *** here", "level info", "url ***", "long ***", 'json "***"',
                                     "short abc"]


def test_mask_filter_streams(tmp_path):
    """Each line comes out as it goes in (logs -f, hook output): no block buffering."""
    lay = _envfile(tmp_path, f"API_TOKEN={SECRET}\n")
    p = subprocess.Popen(["sh", "-c", H.mask_filter(lay)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        p.stdin.write(f"one {SECRET}\n")
        p.stdin.flush()
        got = []
        t = threading.Thread(target=lambda: got.append(p.stdout.readline()), daemon=True)
        t.start()
        t.join(5)
        assert got == ["one ***\n"]
    finally:
        p.stdin.close()
        p.wait(10)


def test_mask_filter_without_env_file_passes_lines(tmp_path):
    lay = _envfile(tmp_path, "")
    lay = Layout(**{**lay.__dict__, "env_path": str(tmp_path / "missing.env")})
    r = subprocess.run(["sh", "-c", H.mask_filter(lay)], input="a\nb\n", capture_output=True, text=True)
    assert r.stdout == "a\nb\n"


def test_masked_pipeline_keeps_the_exit_status():
    s = H.masked_pipeline('sh -c "echo out; echo err >&2; exit 7"', "sed s/o/0/")
    r = subprocess.run(["sh", "-c", s], capture_output=True, text=True)
    assert r.returncode == 7 and r.stdout.splitlines() == ["0ut", "err"]


# -- running: stages, once ------------------------------------------------------------------------

def _ctxs(tmp_path, monkeypatch, n, hooks, script=lambda hook: f"echo ran {hook.run}"):
    inv = load_inv(tmp_path, {"hooks": hooks})
    run = SimpleNamespace(task="deploy", cancel=threading.Event(), dry_run=False, extra={})
    monkeypatch.setattr(H, "hook_cmd", lambda inv, lay, hook, rid, image="": H.Cmd("sh", "-c", script(hook)))
    out = []
    for i in range(n):
        c = LocalCtx(inv, name=f"h{i + 1}")
        c.run_ = run
        out.append(c)
    return out, run


def test_before_switch_failure_raises_after_switch_only_reports(tmp_path, monkeypatch):
    (ctx,), run = _ctxs(tmp_path, monkeypatch, 1, {"before_switch": ["fail"], "after_switch": ["fail"]},
                        script=lambda hook: "exit 3")
    with pytest.raises(StepFailed) as e:
        H.run_hooks(ctx, "before_switch", "R1")
    assert "hooks.before_switch[0] failed" in e.value.message and "old release keeps serving" in e.value.message
    H.run_hooks(ctx, "after_switch", "R1")   # no raise: the release already serves
    assert [(s[0], s[1]) for s in ctx.steps] == [("hook before_switch[0]", "failed"), ("hook after_switch[0]", "failed")]
    assert [r["result"] for r in run.extra["hook_runs"]] == ["failed", "failed"]
    assert run.extra["hook_runs"][0]["exit"] == 3


def test_once_runs_on_exactly_one_host(tmp_path, monkeypatch):
    ctxs, run = _ctxs(tmp_path, monkeypatch, 4, {"before_switch": [{"run": "migrate", "once": True}, "per-host"]})
    ts = [threading.Thread(target=H.run_hooks, args=(c, "before_switch", "R1")) for c in ctxs]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    ran = [c.host.name for c in ctxs if any("ran migrate" in x for x in c.commands)]
    assert len(ran) == 1
    per_host = [c.host.name for c in ctxs if any("ran per-host" in x for x in c.commands)]
    assert len(per_host) == 4
    skipped = [s for c in ctxs for s in c.steps if s[1] == "skipped"]
    assert len(skipped) == 3 and all(f"ran on {ran[0]}" in s[2] for s in skipped)


def test_failed_once_hook_fails_every_host(tmp_path, monkeypatch):
    ctxs, run = _ctxs(tmp_path, monkeypatch, 3, {"before_switch": [{"run": "migrate", "once": True}]},
                      script=lambda hook: "exit 1")
    errors = []

    def one(c):
        try:
            H.run_hooks(c, "before_switch", "R1")
        except StepFailed as e:
            errors.append(e.message)

    ts = [threading.Thread(target=one, args=(c,)) for c in ctxs]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert len(errors) == 3
    assert sum("once, on this host" in m for m in errors) == 1


def test_dry_run_shows_hooks_and_runs_nothing(tmp_path):
    inv = load_inv(tmp_path, {"hooks": {"before_build": ["npm run check"]}})
    ctx = LocalCtx(inv, dry_run=True)
    H.run_hooks(ctx, "before_build", "R1")
    assert ctx.commands == [] and ctx.steps[0][:2] == ("hook before_build[0]", "changed")
    assert "npm run check" in ctx.steps[0][2]


# -- notifications: a real local HTTP server ------------------------------------------------------

class _Hook:
    def __init__(self, status=200):
        self.bodies, self.status = [], status
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                outer.bodies.append((self.path, self.headers.get("Content-Type"), json.loads(self.rfile.read(n))))
                self.send_response(outer.status)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook/{SECRET}"

    def close(self):
        self.server.shutdown()


@pytest.fixture
def webhook():
    h = _Hook()
    yield h
    h.close()


def _run(tmp_path, notify, hosts=("h1", "h2"), failed=()):
    from tasks.core.runner import Output

    inv = load_inv(tmp_path, {"notify": notify, "environment": "prod"})
    lines = []
    out = Output(stream=SimpleNamespace(write=lines.append, flush=lambda: None))
    run = SimpleNamespace(inv=inv, dry_run=False, hosts=[SimpleNamespace(name=h) for h in hosts], extra={},
                          secrets=[], out=out, failed_hosts=lambda: list(failed))
    out.secrets = run.secrets
    run.add_secrets = lambda vs: run.secrets.extend(vs)
    from tasks.core.commands import mask_text

    run.mask_text = lambda t: mask_text(t, run.secrets)
    return run, lines


def test_payloads_posted_on_start_and_success(tmp_path, webhook):
    run, lines = _run(tmp_path, [{"url": webhook.url}, {"url": webhook.url, "format": "slack", "events": ["success"]}])
    n = N.Notifier(run, "deploy", "20250101T000000Z-v2")
    n.start()
    n.finish()
    assert [b[2].get("event") or "slack" for b in webhook.bodies] == ["deploy.start", "deploy.success", "slack"]
    p = webhook.bodies[1][2]
    assert webhook.bodies[1][1] == "application/json"
    assert (p["task"], p["phase"], p["app"], p["environment"], p["release"], p["hosts"], p["result"]) == \
        ("deploy", "success", "demo", "prod", "20250101T000000Z-v2", ["h1", "h2"], "ok")
    assert "@" in p["who"] and isinstance(p["duration"], float) and p["failed_hosts"] == []
    assert webhook.bodies[0][2]["duration"] is None
    text = webhook.bodies[2][2]["text"]
    assert "deploy of demo (prod) release 20250101T000000Z-v2 succeeded on 2 host(s): h1, h2" in text
    assert [e["result"] for e in run.extra["notify"]] == ["ok", "ok", "ok"]
    assert lines == []


def test_failure_payload_names_failed_hosts(tmp_path, webhook):
    run, _ = _run(tmp_path, [{"url": webhook.url, "events": ["failure"]}], failed=["h2"])
    n = N.Notifier(run, "rollback")
    n.start()
    n.finish()
    (body,) = [b[2] for b in webhook.bodies]
    assert (body["event"], body["result"], body["failed_hosts"]) == ("rollback.failure", "failed", ["h2"])


def test_failing_webhook_is_a_masked_warning(tmp_path):
    bad = _Hook(status=500)
    try:
        run, lines = _run(tmp_path, [{"url": bad.url, "name": "ops"}])
        n = N.Notifier(run, "deploy", "R")
        n.start()                # no raise
        n.finish()
    finally:
        bad.close()
    text = "".join(lines)
    assert "warning: webhook ops (deploy.start): HTTP 500" in text and SECRET not in text
    assert run.extra["notify"][0]["result"] == "failed"
    # nothing listening: still one line, no URL
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    run, lines = _run(tmp_path, [{"url": f"http://127.0.0.1:{port}/x/{SECRET}"}])
    N.Notifier(run, "deploy", "R").start()
    assert "warning: webhook notify[0]" in "".join(lines) and SECRET not in "".join(lines)


def test_task_filter_and_dry_run(tmp_path, webhook):
    run, _ = _run(tmp_path, [{"url": webhook.url, "tasks": ["deploy"]}])
    N.Notifier(run, "rotate-env").start()
    run.dry_run = True
    N.Notifier(run, "deploy").start()
    assert webhook.bodies == []
