"""The dnf / Amazon Linux 2023 path at the command level.

No AL2023 image can be booted here, so the whole `bootstrap` task runs
against a recording connection: the fact script is answered with facts
recorded by hand from a fresh AL2023 instance (fixtures/facts-al2023.txt),
every other command succeeds, and the exact commands are asserted.
"""
from pathlib import Path

import pytest

from tasks.core import runner
from tasks.cli.base import RunOptions
from tasks.cli.bootstrap import bootstrap

FIXTURE = (Path(__file__).parent / "fixtures" / "facts-al2023.txt").read_text()


class Result:
    def __init__(self, stdout="", stderr="", exited=0):
        self.stdout, self.stderr, self.exited = stdout, stderr, exited


def unwrap(text):
    """The command as built, without the sudo wrapper and the `sh -c` of scripts."""
    import shlex

    for _ in range(2):
        parts = shlex.split(text)
        if parts[:4] == ["sudo", "-n", "-H", "--"]:
            parts = parts[4:]
        if parts[:2] == ["sh", "-c"] and len(parts) == 3:
            text = parts[2]
    return text


class RecordingConn:
    """Stands in for fabric's Connection: `run` (commands without stdin) and
    `client.get_transport().open_session()` (commands fed on stdin)."""

    def __init__(self):
        self.commands = []
        self.raw = []
        self.stdins = []
        self.client = self

    def answer(self, text, stdin=None):
        self.raw.append(text)
        self.commands.append(unwrap(text))
        self.stdins.append(stdin)
        if "@@ os" in text:
            return Result(FIXTURE)
        if "certbot certonly" in text:
            return Result("Successfully received certificate.\n")
        if "FABSHIP_LOCK_ACQUIRED" in text:
            return Result("FABSHIP_LOCK_ACQUIRED\n")
        return Result("")

    def run(self, text, **kw):
        stream = kw.get("in_stream")
        return self.answer(text, stream.getvalue() if stream else None)

    def get_transport(self):
        return self

    def open_session(self, timeout=None):
        return FakeChannel(self)

    def close(self):
        pass


class FakeChannel:
    eof_received = True  # the whole answer is there at once (the runner reads until EOF)

    def __init__(self, conn):
        self.conn, self.data, self.text, self.result = conn, b"", "", None

    def settimeout(self, t):
        pass

    def exec_command(self, text):
        self.text = text

    def sendall(self, data):
        self.data += data

    def shutdown_write(self):
        self.result = self.conn.answer(self.text, self.data)
        self.out = self.result.stdout.encode()
        self.err = self.result.stderr.encode()

    def recv_ready(self):
        return bool(self.out)

    def recv(self, n):
        chunk, self.out = self.out[:n], self.out[n:]
        return chunk

    def recv_stderr_ready(self):
        return bool(self.err)

    def recv_stderr(self, n):
        chunk, self.err = self.err[:n], self.err[n:]
        return chunk

    def exit_status_ready(self):
        return True

    def recv_exit_status(self):
        return self.result.exited

    def close(self):
        pass


@pytest.fixture
def al2023(tmp_path, monkeypatch):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    env = tmp_path / "prod.env"
    env.write_text("DATABASE_URL=postgres://u:supersecret@db/app\nPORT=3000\n")
    inv = tmp_path / "al.yaml"
    inv.write_text(f"""
hosts: {{static: {{web1: {{address: 10.0.0.5}}}}}}
ssh: {{user: ec2-user, known_hosts: {tmp_path}/kh}}
packages: [git, jq, unzip]
swap: {{size: 2G}}
app: {{name: demo, kind: node, port: 3000, node_version: "20", start: node dist/server.js}}
deploy: {{source: artifact, artifact: dist.tar.gz, build: [npm ci, npm run build]}}
nginx: {{server_name: demo.example.com}}
tls: {{enabled: true, email: ops@example.com, acme_server: "https://acme.example/dir", acme_ca_file: {ca}}}
""")
    conns = {}

    def connect(self, host):
        return conns.setdefault(host.name, RecordingConn())

    monkeypatch.setattr(runner.Run, "connect", connect)
    monkeypatch.setenv("FABSHIP_RUNS_DIR", str(tmp_path / "runs"))
    return str(inv), str(env), conns


def test_al2023_commands(al2023, capsys):
    inv, env, conns = al2023
    # gate=False: the recording connection answers only bootstrap's fact script (the
    # gate's own facts are tested in tests/unit/test_verify_*.py)
    bootstrap(RunOptions(inventory=inv, gate=False), env_file=env)
    cmds = conns["web1"].commands
    text = "\n".join(c for c in cmds if "@@ os" not in c)
    # every command goes through sudo: the login user is ec2-user
    assert all(c.startswith("sudo -n -H -- sh -c ") for c in conns["web1"].raw)
    # 1. facts, 2. the app's deploy lock (before the first change), 3. one dnf call with the
    # AL2023 names (nodejs20 + npm, augeas for certbot)
    assert "@@ os" in cmds[0]
    assert "mkdir -- /opt/demo/.fabship/lock" in cmds[1] and '"action": "bootstrap"' in cmds[1]
    assert cmds[2] == "dnf install -y -q nginx nodejs20 nodejs20-npm augeas-libs git jq unzip"
    assert "@@ os" in cmds[3]   # facts again after packages (new units and groups)
    # certbot from PyPI in a venv: not packaged on AL2023
    assert "python3 -m venv /opt/certbot" in cmds[4] and "pip install -q certbot certbot-nginx" in cmds[4]
    # swap: fallocate with a dd fallback, chmod 600, mkswap, rename, one fstab line, swapon
    assert "fallocate -l 2147483648 -- \"$new\" 2>/dev/null || dd if=/dev/zero of=\"$new\" bs=1M count=2048" in text
    assert "/swapfile none swap sw 0 0" in text and 'swapon -- "$f"' in text
    # layout: group, user, dirs
    assert "groupadd --system demo" in text
    assert "useradd --system --gid demo --create-home --home-dir /home/demo --shell /usr/sbin/nologin demo" in text
    assert "mkdir -p -- /opt/demo/.fabship/slots && chown -- root:demo /opt/demo/.fabship/slots" in text
    # env file: 0600 root:demo via stdin, value never on a command line
    assert "supersecret" not in text
    env_i = next(i for i, c in enumerate(cmds) if "want=" in c and "/etc/demo/demo.env" in c)
    assert b"supersecret" in conns["web1"].stdins[env_i]
    assert "mode=0600" in cmds[env_i] and "group=demo" in cmds[env_i]
    # unit: verified as an instance before install, enabled for the first blue/green port
    assert "systemd-analyze verify" in text and "demo@3001.service" in text
    assert "systemctl enable -q -- demo@3001.service" in text
    # nginx on AL2023: conf.d, no sites-enabled, nothing to remove; nginx -t before reload
    assert "/etc/nginx/conf.d/demo.conf" in text and "sites-enabled" not in text
    assert "nginx -t" in text
    # TLS: CA uploaded, our own renewal timer, certbot certonly against the configured server
    assert "/etc/systemd/system/certbot-renew.timer" in text
    assert "systemctl enable -q --now certbot-renew.timer" in text
    certbot = next(c for c in cmds if "certbot certonly" in c)
    assert "REQUESTS_CA_BUNDLE=/etc/fabship/acme-ca.pem certbot certonly --nginx --cert-name demo.example.com " \
           "-d demo.example.com --non-interactive --agree-tos -m ops@example.com --no-eff-email " \
           "--deploy-hook 'systemctl reload nginx' --server https://acme.example/dir" in certbot
    # and after the certificate: the HTTPS site
    https = [c for c in cmds if "nginx -t" in c][-1]
    assert https != [c for c in cmds if "nginx -t" in c][0]
    # the run that changed things leaves an audit line, then gives the lock back
    assert "action=bootstrap" in cmds[-2] and "result=ok" in cmds[-2] and "/opt/demo/.fabship/audit.log" in cmds[-2]
    assert "rm -rf -- /opt/demo/.fabship/lock" in cmds[-1]
    assert "supersecret" not in capsys.readouterr().out


def test_al2023_dry_run_runs_only_facts(al2023, capsys):
    inv, env, conns = al2023
    bootstrap(RunOptions(inventory=inv, dry_run=True), env_file=env)
    cmds = conns["web1"].commands
    assert len(cmds) == 1 and "@@ os" in cmds[0]
    o = capsys.readouterr().out
    assert "would run: sudo -n -H -- sh -c 'dnf install -y -q nginx nodejs20 nodejs20-npm augeas-libs git jq unzip'" in o
    assert "DATABASE_URL" in o and "PORT" in o and "supersecret" not in o
    assert "+++ /etc/nginx/conf.d/demo.conf (new)" in o


def test_al2023_node_default_and_unsupported(tmp_path):
    from tasks.config import platforms as plat

    p = plat.detect(FIXTURE.split("@@ virt")[0])
    assert p.family == "dnf" and p.default_user == "ec2-user" and p.certbot_via_pip
    assert plat.node_packages(p, None) == ["nodejs20", "nodejs20-npm"]
    assert plat.node_packages(p, "18") == ["nodejs", "nodejs-npm"]
    assert plat.node_packages(p, "22") == ["nodejs22", "nodejs22-npm"]
    assert plat.docker_packages(p, False) == ["docker"]
    with pytest.raises(plat.UnsupportedPlatform) as e:
        plat.detect('ID=centos\nVERSION_ID="7"\nPRETTY_NAME="CentOS Linux 7 (Core)"\n')
    assert str(e.value) == ("unsupported platform: CentOS Linux 7 (Core) (ID=centos, VERSION_ID=7); "
                            "supported: Debian 12, Ubuntu 22.04/24.04, Amazon Linux 2023")


def test_a_held_lock_stops_bootstrap_before_its_first_change(al2023, monkeypatch):
    """Another run (a deploy, a second controller's bootstrap) holds the app's lock:
    bootstrap fails the host naming the holder (exit 3) and changes nothing."""
    import json
    import os
    import socket

    from invoke.exceptions import Exit

    inv, env, conns = al2023
    holder = {"id": "x", "user": "ci@runner", "control_host": socket.gethostname(), "pid": os.getpid(),
              "time": "2026-12-01T00:00:00Z", "epoch": 4102444800, "action": "deploy", "release": "R1"}
    answer = RecordingConn.answer

    def held(self, text, stdin=None):
        if "FABSHIP_LOCK_ACQUIRED" in text:
            self.raw.append(text)
            self.commands.append(unwrap(text))
            return Result("FABSHIP_LOCK_HELD\n" + json.dumps(holder) + "\n")
        return answer(self, text, stdin)

    monkeypatch.setattr(RecordingConn, "answer", held)
    with pytest.raises(Exit) as e:
        bootstrap(RunOptions(inventory=inv, gate=False), env_file=env)
    assert e.value.code == 3
    cmds = conns["web1"].commands
    assert "@@ os" in cmds[0] and "mkdir -- /opt/demo/.fabship/lock" in cmds[1]
    assert len(cmds) == 2, cmds[2:]   # nothing after the refused lock: no dnf, no audit, no release
