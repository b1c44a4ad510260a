"""verify.checks[].session and ${KEY} values: validation before connecting, the
generated remote script (exact), the env reader and renderer (the awk program run
locally), the verdicts and session skipping, and the whole HTTP part of the facts
script run locally against a small HTTP server (no hosts, no root)."""
import base64
import json
import os
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from tasks.verify import checks as C

from tasks.verify import spec as CS

from tasks.verify import probes as CP
from tasks.core.errors import ConfigError

from .test_verify_checks import inv_from

BASE = {
    "hosts": {"static": {"web1": "10.0.0.5"}},
    "app": {"name": "ota", "kind": "node", "port": 3000},
    "nginx": {"server_name": "{host}.example.test"},
    "env": {"contract": {"required": ["ADMIN_PASSWORD", "API_TOKEN"], "optional": ["S3_KEY"]}},
    "deploy": {"source": "artifact", "artifact": ".", "strategy": "restart"},
    "verify": {"checks": [
        {"name": "releases_need_login", "path": "/api/releases", "expect_status": 401},
        {"name": "login", "session": "admin", "method": "POST", "path": "/api/login",
         "headers": {"content-type": "application/json"}, "body": '{"password":"${ADMIN_PASSWORD}"}'},
        {"name": "releases", "session": "admin", "path": "/api/releases", "body_contains": '"releases"'},
    ]},
}


def inv_of(tmp_path, checks=None, **changes):
    d = yaml.safe_load(yaml.safe_dump(BASE))
    if checks is not None:
        d["verify"]["checks"] = checks
    return inv_from(tmp_path, d, **changes)


def spec_of(tmp_path, checks=None, **changes):
    inv = inv_of(tmp_path, checks, **changes)
    return CS.build_spec(inv, inv.resolve_hosts()[0])


def config_error(tmp_path, checks=None, **changes) -> str:
    with pytest.raises(ConfigError) as e:
        spec_of(tmp_path, checks, **changes)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# -- validation before connecting ---------------------------------------------------------

def test_sessions_number_their_steps_and_collect_references(tmp_path):
    s = spec_of(tmp_path)
    assert [(c.name, c.session, c.step, c.refs) for c in s.http_checks] == [
        ("releases_need_login", None, 0, ()),
        ("login", "admin", 1, ("ADMIN_PASSWORD",)),
        ("releases", "admin", 2, ()),
    ]


def test_unknown_key_names_the_check_and_the_key(tmp_path):
    checks = [{"name": "login", "method": "POST", "path": "/api/login", "body": '{"password":"${ADMIN_PASSWD}"}'}]
    msg = config_error(tmp_path, checks)
    assert "verify.checks[0].body" in msg and "'login'" in msg and "${ADMIN_PASSWD}" in msg
    assert "env.contract" in msg and "did you mean ADMIN_PASSWORD?" in msg


def test_unknown_key_in_a_header_names_the_header(tmp_path):
    checks = [{"name": "api", "path": "/api", "headers": {"authorization": "Bearer ${NOPE}"}}]
    msg = config_error(tmp_path, checks)
    assert "verify.checks[0].headers.authorization" in msg and "${NOPE}" in msg


def test_optional_contract_keys_may_be_referenced(tmp_path):
    s = spec_of(tmp_path, [{"name": "s3", "path": "/s3", "headers": {"x-key": "${S3_KEY}"}}])
    assert s.http_checks[0].refs == ("S3_KEY",)


def test_references_need_an_env_section(tmp_path):
    msg = config_error(tmp_path, [{"name": "login", "path": "/l", "method": "POST", "body": "${ADMIN_PASSWORD}"}],
                       env=None)
    assert "verify.checks[0].body" in msg and "no env section" in msg


def test_references_need_an_app(tmp_path):
    msg = config_error(tmp_path, [{"name": "login", "path": "/l", "method": "POST", "body": "${ADMIN_PASSWORD}"}],
                       app=None, deploy=None)
    assert "verify.checks[0].body" in msg and "no app section" in msg


def test_references_only_in_body_and_header_values(tmp_path):
    msg = config_error(tmp_path, [{"name": "p", "path": "/users/${API_TOKEN}"}])
    assert "verify.checks[0].path" in msg and "only in the body and in header values" in msg


def test_malformed_reference_is_refused_and_dollar_dollar_is_literal(tmp_path):
    msg = config_error(tmp_path, [{"name": "b", "path": "/b", "method": "POST", "body": "x=${admin password}"}])
    assert "verify.checks[0].body" in msg and "$${" in msg
    s = spec_of(tmp_path, [{"name": "b", "path": "/b", "method": "POST", "body": "literal $${HOME} $5"}])
    assert s.http_checks[0].refs == ()


def test_a_session_keeps_one_via(tmp_path):
    checks = [{"name": "a", "session": "s", "path": "/a", "via": "nginx"},
              {"name": "b", "session": "s", "path": "/b"}]
    msg = config_error(tmp_path, checks)
    assert "verify.checks[1].via" in msg and "session 's'" in msg and "via nginx" in msg


def test_session_name_is_validated_by_the_schema(tmp_path):
    with pytest.raises(ConfigError) as e:
        inv_of(tmp_path, [{"name": "a", "session": "my session", "path": "/a"}])
    assert "verify.checks[0].session" in str(e.value) and "session name" in str(e.value)


def test_env_refs():
    assert CS.env_refs('{"a":"${A}","b":"${B_2}${A}"}') == ["A", "B_2"]
    assert CS.env_refs("$${A} costs $5") == []
    assert CS.env_refs(None) == []
    with pytest.raises(ValueError):
        CS.env_refs("${}")


@pytest.mark.parametrize("body,headers,mode", [
    ('{"password":"${P}"}', {}, "json"),
    ('{"n": ${P}}', {}, "raw"),                      # outside a string: inserted as it is
    ("user=admin&password=${P}", {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}, "form"),
    ("password ${P}", {}, "raw"),
    ('{"password":"plain"}', {}, ""),
])
def test_body_mode(body, headers, mode):
    assert CP.body_mode(body, headers) == mode


# -- the remote script (exact) ---------------------------------------------------------------

def test_session_steps_call_sreq_exactly(tmp_path):
    s = spec_of(tmp_path)
    login, releases = (CP._step_snippet(s, i, s.http_checks[i], 5) for i in (1, 2))
    assert login == (
        "sreq \"$fw/s0\" 1 200 '' json '' '{\"password\":\"${ADMIN_PASSWORD}\"}' --max-time 5 -X POST "
        "-H \"@$fw/h.http.1\" -b \"$fw/s0/jar\" -c \"$fw/s0/jar\" "
        "\"http://127.0.0.1:$port\"/api/login")
    assert releases == ("sreq \"$fw/s0\" 2 200 '\"releases\"' '' '' '' --max-time 5 "
                        "-b \"$fw/s0/jar\" -c \"$fw/s0/jar\" \"http://127.0.0.1:$port\"/api/releases")


def test_templated_headers_go_to_a_file_and_plain_ones_to_theirs(tmp_path):
    s = spec_of(tmp_path, [{"name": "api", "path": "/api", "via": "nginx",
                            "headers": {"authorization": "Bearer ${API_TOKEN}", "accept": "text/plain"}}])
    assert CP._step_snippet(s, 0, s.http_checks[0], 5) == (
        "sreq \"$fw/c0\" 1 200 '' '' 'authorization: Bearer ${API_TOKEN}' '' --max-time 5 "
        "-H \"@$fw/h.http.0\" -H 'Host: web1.example.test' http://127.0.0.1/api")
    assert CP.stdin_files(s) == [("h.http.0", "accept: text/plain\n")]   # the plain value: on stdin


def test_facts_script_sets_up_and_removes_the_private_dir(tmp_path):
    s = spec_of(tmp_path)
    script = CP.facts_script(s)
    part = script[script.index("umask 077"):]
    head = part.split("\n")[:8]
    assert head[:7] == [
        "umask 077",
        "fw=$(mktemp -d) || fw=",
        "trap 'rm -rf \"$fw\"' EXIT",
        "trap 'exit 129' HUP INT TERM",
        "[ -z \"$fw\" ] || mkdir \"$fw/s0\"",
        "ef=/etc/ota/ota.env",
        "fk=ADMIN_PASSWORD",
    ]
    assert head[7].startswith("ea='function jesc(")
    assert part.rstrip("\n").endswith('rm -rf "$fw"')
    # the plain check still uses `http`; the session's steps `sreq`
    assert "probe http.0 'http --max-time 5 " in script
    assert "probe http.1 'sreq " in script and "probe http.2 'sreq " in script


def test_no_session_no_reference_leaves_the_script_as_it_was(tmp_path):
    s = spec_of(tmp_path, [{"name": "a", "path": "/a"}])
    script = CP.facts_script(s)
    assert "sreq" not in script and "mktemp -d" not in script and "umask" not in script


def test_the_script_never_holds_a_value(tmp_path):
    s = spec_of(tmp_path)
    script = CP.facts_script(s)
    assert "${ADMIN_PASSWORD}" in script  # only the reference; the value is read on the host
    assert "source" not in script.split("ea=")[0] and ". /etc/ota" not in script


# -- the env reader and renderer (the awk program, run locally) ------------------------------

AWK = shutil.which("awk")
needs_awk = pytest.mark.skipif(AWK is None, reason="no awk on this machine")

ENV_TEXT = (
    "# comment\n"
    "export PLAIN=plain value  \n"
    'DQ="a \\"quoted\\" \\\\ \\$HOME \\q"\n'
    "SQ='single $HOME \\n'\n"
    'MULTI="line1\nline2"\n'
    " SPACED = spaced\n"
    "TWICE=first\n"
    "TWICE=last\n"
    "EMPTY=\n"
    'CTRL="tab\there"\n'
    "CRLF=windows\r\n"
)


def awk(tmp_path, mode, template="", keys="", stdin=None, env_text=ENV_TEXT):
    f = tmp_path / "app.env"
    f.write_text(env_text)
    argv = [AWK, CP.ENV_AWK, str(f)] + (["part=2", "-"] if mode == "mask" else [])
    r = subprocess.run(argv, input=stdin, capture_output=True, text=True,
                       env={**os.environ, "M": mode, "T": template, "K": keys, "LC_ALL": "C"})
    return r.returncode, r.stdout, r.stderr


@needs_awk
@pytest.mark.parametrize("key,value", [
    ("PLAIN", "plain value"),
    ("DQ", 'a "quoted" \\ $HOME \\q'),   # systemd: \" \\ \$ \` unescape; other \X stays
    ("SQ", "single $HOME \\n"),          # single quotes are literal
    ("MULTI", "line1\nline2"),
    ("SPACED", "spaced"),
    ("TWICE", "last"),                   # the last one wins, as in systemd
    ("EMPTY", ""),
    ("CTRL", "tab\there"),
    ("CRLF", "windows"),
])
def test_env_reader_reads_like_systemd(tmp_path, key, value):
    assert awk(tmp_path, "raw", "${%s}" % key) == (0, value + "x", "")


@needs_awk
def test_render_escapes_for_json_and_forms(tmp_path):
    code, out, _ = awk(tmp_path, "json", '{"p":"${DQ}","m":"${MULTI}","c":"${CTRL}"} $${PLAIN} $5')
    assert code == 0 and out.endswith("x")
    assert json.loads(out[:-1].rsplit(" ${PLAIN}", 1)[0]) == {"p": 'a "quoted" \\ $HOME \\q', "m": "line1\nline2",
                                                   "c": "tab\there"}
    assert out[:-1].endswith(" ${PLAIN} $5")
    assert awk(tmp_path, "form", "v=${SQ}&w=${PLAIN}") == (0, "v=single%20%24HOME%20%5Cn&w=plain%20valuex", "")


@needs_awk
def test_render_refuses_missing_keys_and_line_breaks_in_headers(tmp_path):
    code, out, err = awk(tmp_path, "raw", "${NOT_THERE}")
    assert code == 2 and out == "" and err.strip() == f"${{NOT_THERE}} is not set in {tmp_path / 'app.env'}"
    code, out, err = awk(tmp_path, "header", "x-multi: ${MULTI}")
    assert code == 3 and out == "" and "${MULTI} holds a line break" in err and "line1" not in err
    assert awk(tmp_path, "header", "authorization: Bearer ${PLAIN}") == (0, "authorization: Bearer plain value", "")


@needs_awk
def test_mask_hides_raw_and_json_escaped_values_longest_first(tmp_path):
    env_text = 'PW="p\\"w-secret"\nSHORT=secret\nEMPTY=\n'
    body = 'raw p"w-secret / json p\\"w-secret / short secret / keep this'
    code, out, _ = awk(tmp_path, "mask", keys="SHORT PW EMPTY", stdin=body, env_text=env_text)
    assert (code, out) == (0, "raw *** / json *** / short *** / keep this")


# -- verdicts and session skipping ----------------------------------------------------------

def frame(name, text, rc=0):
    return f"{CP.MARK} {name} {rc}\n{base64.b64encode(text.encode()).decode()}\n"


def evaluate(s, outputs: dict) -> dict:
    text = frame("port", "3000") + "".join(frame(f"http.{i}", out) for i, out in outputs.items())
    p = C.Probe(s, CP.parse_facts(text))
    checks = [c for c in C.checks_for(s) if c.name.startswith("http:")]
    return {r.name: (r.status, r.message) for r in C.evaluate(checks, p)}


def test_the_login_flow_passes(tmp_path):
    s = spec_of(tmp_path)
    res = evaluate(s, {0: '0 401\n\n{"error":"unauthorized"}', 1: '0 200\n\n{"ok":true}',
                       2: '0 200\n\n{"releases":[1]}'})
    assert {n: st for n, (st, _) in res.items()} == {"http:releases_need_login": "passed", "http:login": "passed",
                                                     "http:releases": "passed"}
    assert res["http:login"][1] == "POST http://127.0.0.1:3000/api/login [headers: content-type] -> 200"


def test_a_failed_step_skips_the_rest_of_its_session(tmp_path):
    s = spec_of(tmp_path)
    res = evaluate(s, {0: '0 401\n\n', 1: '0 401\n\n{"error":"bad password ***"}', 2: "skip 1\n"})
    assert res["http:login"] == ("failed", "POST http://127.0.0.1:3000/api/login [headers: content-type] "
                                           'answered 401, expected 200 (body: {"error":"bad password ***"})')
    assert res["http:releases"] == ("skipped", "session step 1 failed (http:login)")
    assert res["http:releases_need_login"][0] == "passed"


def test_a_later_step_fails_with_a_clear_message(tmp_path):
    s = spec_of(tmp_path)
    res = evaluate(s, {0: "0 401\n\n", 1: "0 200\n\n", 2: '0 401\n\n{"error":"unauthorized"}'})
    assert res["http:releases"] == ("failed", "GET http://127.0.0.1:3000/api/releases answered 401, expected 200 "
                                              '(body: {"error":"unauthorized"})')


def test_body_contains_failure_also_stops_the_session(tmp_path):
    checks = [dict(c) for c in BASE["verify"]["checks"]]
    checks[1]["body_contains"] = '"ok"'
    checks.append({"name": "after", "session": "admin", "path": "/after"})
    s = spec_of(tmp_path, checks)
    res = evaluate(s, {0: "0 401\n\n", 1: "0 200\n\nnope", 2: "skip 1\n", 3: "skip 1\n"})
    assert res["http:login"][0] == "failed" and "lacks '\"ok\"'" in res["http:login"][1]
    assert res["http:releases"] == res["http:after"] == ("skipped", "session step 1 failed (http:login)")


def test_a_request_that_cannot_be_built_fails_naming_the_key(tmp_path):
    s = spec_of(tmp_path)
    res = evaluate(s, {0: "0 401\n\n", 1: "build 0\n${ADMIN_PASSWORD} is not set in /etc/ota/ota.env \n",
                       2: "skip 1\n"})
    assert res["http:login"] == ("failed", "POST http://127.0.0.1:3000/api/login [headers: content-type]: "
                                           "cannot build the request: ${ADMIN_PASSWORD} is not set in /etc/ota/ota.env")
    assert res["http:releases"] == ("skipped", "session step 1 failed (http:login)")


def test_two_sessions_are_independent(tmp_path):
    checks = [{"name": "a1", "session": "a", "path": "/a1"}, {"name": "b1", "session": "b", "path": "/b1"},
              {"name": "a2", "session": "a", "path": "/a2"}, {"name": "b2", "session": "b", "path": "/b2"}]
    s = spec_of(tmp_path, checks)
    res = evaluate(s, {0: "0 500\n\n", 1: "0 200\n\n", 2: "skip 1\n", 3: "0 200\n\n"})
    assert [res[f"http:{n}"][0] for n in ("a1", "b1", "a2", "b2")] == ["failed", "passed", "skipped", "passed"]
    assert CP._session_dirs(s) == {0: '"$fw/s0"', 1: '"$fw/s1"', 2: '"$fw/s0"', 3: '"$fw/s1"'}


# -- the HTTP part of the facts script, run locally against a small server ---------------------

PASSWORD = 'pa"ss w\\rd-CANARY-1234'   # a quote and a backslash: must survive JSON escaping


class _App(BaseHTTPRequestHandler):
    seen: list = []

    def log_message(self, *a):
        pass

    def _send(self, code, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(code)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length") or 0)).decode()
        self.seen.append(("POST", self.path, body))
        try:
            pw = json.loads(body).get("password")
        except ValueError:
            return self._send(400, {"error": "not json"})
        if pw == PASSWORD:
            return self._send(200, {"ok": True}, [("set-cookie", "session=s3ss10n; HttpOnly; Path=/")])
        return self._send(401, {"error": f"bad password {pw}"})  # echoes it: must be masked

    def do_GET(self):
        self.seen.append(("GET", self.path, self.headers.get("cookie")))
        if self.path == "/api/releases":
            if "session=s3ss10n" in (self.headers.get("cookie") or ""):
                return self._send(200, {"releases": ["r1"]})
            return self._send(401, {"error": "unauthorized"})
        if self.path == "/echo-token":
            return self._send(200, {"token": self.headers.get("authorization")})
        return self._send(404, {})


@pytest.fixture
def server():
    _App.seen = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _App)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    t.start()
    yield srv
    srv.shutdown()


def run_http_part(tmp_path, s, port, env_text):
    """facts_script's HTTP section (from the private dir setup on) with the
    prelude, run by sh here; the env file path pointed at a local file."""
    env = tmp_path / "app.env"
    env.write_text(env_text)
    env.chmod(0o600)
    script = CP.facts_script(s)
    part = script[script.index("umask 077"):].replace("ef=/etc/ota/ota.env", f"ef={env}")
    text = CP._PRELUDE + f"port={port}\nTMPDIR={tmp_path}\nexport TMPDIR\n" + part
    r = subprocess.run(["sh", "-c", text], input=(CP.facts_stdin(s) or b"").decode(), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return CP.parse_facts(r.stdout), r


def local_spec(tmp_path, extra=()):
    checks = [dict(c) for c in BASE["verify"]["checks"]] + list(extra)
    return spec_of(tmp_path, checks)


needs_curl = pytest.mark.skipif(not (shutil.which("curl") and AWK), reason="needs curl and awk")


@needs_curl
def test_login_then_cookie_works_and_leaves_nothing_behind(tmp_path, server):
    s = local_spec(tmp_path, [{"name": "token", "path": "/echo-token",
                               "headers": {"authorization": "Bearer ${API_TOKEN}"}}])
    env_text = f'ADMIN_PASSWORD="{PASSWORD.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"\n' \
               "API_TOKEN=tok-CANARY-5678\n"
    facts, r = run_http_part(tmp_path, s, server.server_port, env_text)
    p = C.Probe(s, {**facts, "port": CP.Fact(0, str(server.server_port))})
    res = {x.name: x for x in C.evaluate([c for c in C.checks_for(s) if c.name.startswith("http:")], p)}
    assert {n: x.status for n, x in res.items()} == {n: "passed" for n in res}, res
    # the server got the password JSON-escaped, intact; the cookie came back on the next step
    assert ("POST", "/api/login", json.dumps({"password": PASSWORD}, separators=(",", ":"))) in _App.seen
    assert ("GET", "/api/releases", "session=s3ss10n") in _App.seen
    # ... while the echoed header value was masked on the way out
    assert json.loads(facts["http.3"].out.split("\n", 2)[2]) == {"token": "Bearer ***"}
    assert "CANARY" not in r.stdout + r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.env", "inv.yaml"]  # the private dir is gone


@needs_curl
def test_wrong_password_fails_login_masks_the_echo_and_skips_the_next_step(tmp_path, server):
    s = local_spec(tmp_path)
    facts, r = run_http_part(tmp_path, s, server.server_port, "ADMIN_PASSWORD=wrong-CANARY-0000\n")
    p = C.Probe(s, {**facts, "port": CP.Fact(0, str(server.server_port))})
    res = {x.name: x for x in C.evaluate([c for c in C.checks_for(s) if c.name.startswith("http:")], p)}
    assert res["http:login"].status == "failed"
    assert res["http:login"].message.endswith('answered 401, expected 200 (body: {"error": "bad password ***"})')
    assert (res["http:releases"].status, res["http:releases"].message) == ("skipped",
                                                                           "session step 1 failed (http:login)")
    assert [x for x in _App.seen if x[1] == "/api/releases"] == [("GET", "/api/releases", None)]  # not sent again
    assert "CANARY" not in r.stdout + r.stderr


@needs_curl
def test_missing_key_in_the_env_file_is_a_clear_failure(tmp_path, server):
    s = local_spec(tmp_path)
    facts, _ = run_http_part(tmp_path, s, server.server_port, "OTHER=1\n")
    p = C.Probe(s, {**facts, "port": CP.Fact(0, str(server.server_port))})
    res = {x.name: x for x in C.evaluate([c for c in C.checks_for(s) if c.name.startswith("http:")], p)}
    assert res["http:login"].status == "failed"
    assert "cannot build the request: ${ADMIN_PASSWORD} is not set in" in res["http:login"].message
    assert not [x for x in _App.seen if x[1] == "/api/login"]  # nothing was sent
    assert res["http:releases"].status == "skipped"


# -- found while running the OTA flow on the sandbox (h7) ------------------------------------

def test_swap_check_prefers_the_linked_target_over_a_foreign_swapfile_entry():
    """/proc/swaps is kernel-global in a container: other hosts' /swapfile entries are
    listed too; this host's linked swap file shows by its target path."""
    s = CS.Spec(swap_path="/swapfile", swap_size="512M", swap_bytes=512 * 1024**2)
    swaps = ("Filename Type Size Used Priority\n/swapfile file 262140 248 -2\n"
             "/var/lib/fabship-sandbox-swap-h7/swapfile file 524284 0 -5\n")
    p = C.Probe(s, CP.parse_facts(frame("swaps", swaps) + frame("swapreal", "/var/lib/fabship-sandbox-swap-h7/"
                                                                          "swapfile\next2/ext3\n")))
    assert C.check_swap_active(p) == "/swapfile active, 512.0 MiB"
