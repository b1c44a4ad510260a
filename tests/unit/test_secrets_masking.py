"""Secrets never leak through verify and diagnose: header values travel on the
facts script's stdin (never a command line), messages name header keys only,
response bodies are masked, framed (base64) output is never streamed at -vv,
and the certificate check verifies the chain, not an issuer name."""
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tasks.verify import checks as C

from tasks.verify import spec as CS

from tasks.verify import probes as CP
from tasks.core.errors import ConfigError

from .test_verify_checks import BASE, inv_from

TOKEN = "tok-CANARY-4f1e9a"


def spec_with(tmp_path, **changes):
    d = dict(BASE)
    d.update(changes)
    inv = inv_from(tmp_path, d)
    return CS.build_spec(inv, inv.resolve_hosts()[0])


def test_header_values_are_on_stdin_never_in_the_script(tmp_path):
    s = spec_with(tmp_path, health={"path": "/healthz", "headers": {"Authorization": f"Bearer {TOKEN}"}},
                  verify={"checks": [{"name": "api", "path": "/api", "headers": {"X-Api-Key": TOKEN}}]})
    script = CP.facts_script(s)
    assert TOKEN not in script
    assert '-H "@$fw/h.health"' in script and '-H "@$fw/h.http.0"' in script
    assert CP.facts_stdin(s).decode().count(TOKEN) == 2
    assert dict(CP.stdin_files(s))["h.health"] == f"Authorization: Bearer {TOKEN}\n"


@pytest.mark.parametrize("where,headers", [
    ("health", {"X-Token": "a\nInjected: 1"}),
    ("check", {"X-Token": "a\rb"}),
    ("check", {"Bad Name": "x"}),
])
def test_a_header_that_is_not_one_line_is_refused_naming_the_key(tmp_path, where, headers):
    with pytest.raises(ConfigError) as e:
        if where == "health":
            spec_with(tmp_path, health={"path": "/h", "headers": headers})
        else:
            spec_with(tmp_path, verify={"checks": [{"name": "a", "path": "/a", "headers": headers}]})
    msg = str(e.value)
    assert "\n" not in msg and "Injected" not in msg and "a\rb" not in msg
    assert ("headers.X-Token" in msg) or ("Bad Name" in msg)


def test_check_messages_name_header_keys_only(tmp_path):
    s = spec_with(tmp_path, verify={"checks": [{"name": "api", "path": "/api", "headers": {"X-Api-Key": TOKEN}}]})
    probe = C.Probe(s, {"port": CP.Fact(0, "3001"),
                        "http.0": CP.Fact(0, '0 500\n\n{"error":"boom","ADMIN_PASSWORD":"hunter2-x"}')})
    check = next(c for c in C.checks_for(s) if c.name == "http:api")
    with pytest.raises(C.CheckFailed) as e:
        check.fn(probe)
    msg = str(e.value)
    assert TOKEN not in msg and "[headers: X-Api-Key]" in msg
    assert "hunter2-x" not in msg and '"ADMIN_PASSWORD":"***"' in msg   # a contract key echoed: masked


class _Echo(BaseHTTPRequestHandler):
    seen: list = []

    def do_GET(self):
        _Echo.seen.append(dict(self.headers))
        body = b"ok"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def test_the_facts_script_hands_curl_the_headers_from_stdin(tmp_path):
    """The real script, run by sh here: the header reaches the server, from a file
    in the private dir (gone afterwards), and no process had it in its argv."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    try:
        s = spec_with(tmp_path, tls=None, nginx={"enabled": False}, swap=None,
                      health={"path": "/healthz", "port": srv.server_port, "headers": {"X-Token": TOKEN}},
                      verify={"checks": []})
        script = CP.facts_script(s)
        env = {"TMPDIR": str(tmp_path), "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"}
        r = subprocess.run(["sh", "-c", script], input=CP.facts_stdin(s), capture_output=True, timeout=120, env=env)
        facts = CP.parse_facts(r.stdout.decode())
        assert CP.parse_http(facts["health"].out).status == 200, facts["health"].out
        assert any(h.get("X-Token") == TOKEN for h in _Echo.seen), _Echo.seen
        assert sorted(p.name for p in tmp_path.iterdir()) == ["inv.yaml"]   # private dir removed
    finally:
        srv.shutdown()


# -- the certificate chain -------------------------------------------------------------------

def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def certs(tmp_path):
    d = tmp_path
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ss.key", "-out", "ss.pem", "-days", "60",
             "-subj", "/CN=Pebble Intermediate CA fake", "-addext", "subjectAltName=DNS:web1.example.test", cwd=d)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "60",
             "-subj", "/CN=Test Root", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "l.key", "-out", "l.csr",
             "-subj", "/CN=web1.example.test", cwd=d)
    (d / "ext").write_text("subjectAltName=DNS:web1.example.test\nextendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", "l.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "l.pem", "-days", "30", "-extfile", "ext", cwd=d)
    return d


def _verify(d, chain, ca=None):
    """What the cert_chain probe runs (its openssl verify), on local files."""
    args = ["openssl", "verify"] + (["-CAfile", str(ca), "-no-CApath"] if ca else []) + \
        ["-purpose", "sslserver", "-untrusted", str(d / chain), str(d / chain)]
    p = subprocess.run(args, capture_output=True, text=True)
    return CP.Fact(p.returncode, p.stdout + p.stderr)


def _cert_probe(tmp_path, chain_fact, **inv):
    s = spec_with(tmp_path, **inv)
    out = subprocess.run(["openssl", "x509", "-in", str(tmp_path / "ss.pem"), "-noout", "-enddate", "-issuer",
                          "-subject", "-ext", "subjectAltName"], capture_output=True, text=True).stdout
    import time

    facts = {"cert": CP.Fact(0, out), "cert_chain": chain_fact, "now": CP.Fact(0, str(int(time.time())))}
    return s, C.Probe(s, facts)


def test_a_self_signed_certificate_with_the_right_issuer_name_fails(tmp_path, certs):
    s, p = _cert_probe(tmp_path, _verify(certs, "ss.pem"))
    with pytest.raises(C.CheckFailed) as e:
        C.check_cert(p)
    assert "does not chain to a trusted CA (self-signed certificate; trust: the host's CA store)" in str(e.value)


def test_a_chain_to_the_configured_ca_passes_and_to_another_fails(tmp_path, certs):
    inv_dir_ca = {"verify": {"cert_issuer": "Pebble", "cert_ca_file": "ca.pem"}}
    s = spec_with(tmp_path, **inv_dir_ca)
    assert s.cert_ca.startswith("-----BEGIN CERTIFICATE-----") and "verify.cert_ca_file" in s.cert_ca_from
    assert ("ca.pem", s.cert_ca) in CP.stdin_files(s) and '-CAfile "$fw/ca.pem"' in CP.facts_script(s)
    assert C.chain_problem(C.Probe(s, {"cert_chain": _verify(certs, "l.pem", certs / "ca.pem")})) == ""
    assert "self-signed certificate; trust: verify.cert_ca_file" in C.chain_problem(
        C.Probe(s, {"cert_chain": _verify(certs, "ss.pem", certs / "ca.pem")}))


def test_a_missing_ca_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as e:
        spec_with(tmp_path, verify={"cert_ca_file": "nope.pem"})
    assert "verify.cert_ca_file" in str(e.value) and "cannot read" in str(e.value)


# -- -vv never streams framed output ------------------------------------------------------------

def test_verify_and_diagnose_never_stream_their_framed_output(monkeypatch, tmp_path):
    from tasks.cli import diagnose
    from tasks.verify import gate as verify

    from .fakectx import FakeCtx

    ctx = FakeCtx(verbose=2)   # -vv: commands would stream
    verify.FabshipBackend(ctx).run("true")
    assert ctx.calls[-1]["stream"] is False
    src = open(diagnose.__file__).read()
    assert 'check=False, stream=False, what="diagnose"' in src


# -- docker's --env-file takes values literally -------------------------------------------------

ODD = {"QUOTED": '"starts and ends with quotes"', "BACKSLASH": "a\\b\\\\c", "SPACES": "  padded  ",
       "SINGLE": "'single'", "HASH": "x #not a comment", "DOLLAR": "$HOME ${X}", "PLAIN": "tok-123"}


def docker_env_file_parse(text: str) -> dict:
    """docker/cli opts/file.go parseKeyValueFile: left-trim the line, skip empty and
    '#' lines, split at the first '=', the value passed through untouched."""
    out = {}
    for line in text.split("\n"):
        line = line.rstrip("\r").lstrip()
        if not line or line.startswith("#"):
            continue
        k, _, v = line.partition("=")
        out[k] = v
    return out


def test_docker_kinds_get_an_env_file_docker_reads_back_exactly():
    from tasks.core.commands import Secret
    from tasks.core.dotenv import render_dotenv

    vals = {k: Secret(v) for k, v in ODD.items()}
    literal = render_dotenv(vals, literal=True).decode()
    assert docker_env_file_parse(literal) == ODD
    # the systemd format (node/python kinds) would reach a container changed
    assert docker_env_file_parse(render_dotenv(vals).decode()) != ODD


def test_a_value_docker_cannot_carry_is_refused_naming_the_key_only():
    from tasks.core.commands import Secret
    from tasks.core.dotenv import render_dotenv

    with pytest.raises(ConfigError) as e:
        render_dotenv({"OK": Secret("x"), "PEM": Secret("line1\nCANARY-line2")}, literal=True, source="prod.env")
    msg = str(e.value)
    assert "PEM" in msg and "prod.env" in msg and "CANARY" not in msg and "\n" not in msg


def test_value_hashes_match_the_literal_file_on_the_host(tmp_path):
    from tasks.core.commands import Secret
    from tasks.core.dotenv import key_hashes_cmd, parse_key_hashes, render_dotenv, value_hashes

    vals = {k: Secret(v) for k, v in ODD.items()}
    f = tmp_path / "app.env"
    f.write_bytes(render_dotenv(vals, literal=True))
    r = subprocess.run(["sh", "-c", key_hashes_cmd(str(f)).render()], capture_output=True, text=True)
    assert parse_key_hashes(r.stdout) == value_hashes(vals, literal=True)


def test_bootstrap_and_rotate_env_write_docker_format_for_kind_docker(tmp_path):
    from tasks.cli import rotate_env

    src = tmp_path / "prod.env"
    src.write_text("APP_SECRET='\"quoted-and-long-enough\"'\nPAD='  padded  '\n")
    src.chmod(0o600)
    d = {"hosts": {"static": {"web1": "10.0.0.5"}}, "app": {"name": "shop", "kind": "docker", "port": 3000},
         "docker": {"image": "shop"}, "deploy": {"source": "image", "strategy": "restart"},
         "nginx": {"enabled": False}, "env": {"source": {"type": "file", "file": str(src)}}}
    inv = inv_from(tmp_path, d)
    p = rotate_env.plan(inv)
    assert docker_env_file_parse(p.content.decode()) == {"APP_SECRET": '"quoted-and-long-enough"', "PAD": "  padded  "}
    from tasks.cli.bootstrap import env_input

    assert env_input(inv, None).content == p.content
    src.write_text("APP_SECRET=\"two\nlines-CANARY\"\n")
    with pytest.raises(ConfigError) as e:
        rotate_env.plan(inv)
    assert "APP_SECRET" in str(e.value) and "CANARY" not in str(e.value)


@pytest.mark.skipif(not __import__("shutil").which("awk"), reason="no awk")
def test_verify_reads_a_docker_env_file_literally(tmp_path):
    """${KEY} in verify checks: the awk reader in docker mode gets the value as docker does."""
    s = spec_with(tmp_path, app={"name": "shop", "kind": "docker", "port": 3000}, docker={"image": "shop"},
                  deploy={"source": "image", "strategy": "restart"},
                  env={"contract": {"required": ["ADMIN_PASSWORD"]}},
                  verify={"checks": [{"name": "t", "path": "/t", "headers": {"X-P": "${ADMIN_PASSWORD}"}}]})
    setup = "\n".join(CP._private_setup(s))
    assert "BEGIN { lit = 1 }" in setup
    f = tmp_path / "app.env"
    f.write_text('ADMIN_PASSWORD="q" \\\\ x \n')
    awk_prog = "BEGIN { lit = 1 }\n" + CP.ENV_AWK.strip()
    r = subprocess.run(["awk", awk_prog, str(f)], capture_output=True, text=True,
                       env={"M": "header", "T": "${ADMIN_PASSWORD}", "LC_ALL": "C", "PATH": "/usr/bin:/bin"})
    assert r.stdout == '"q" \\\\ x '
