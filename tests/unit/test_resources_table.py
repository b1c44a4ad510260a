"""Table-driven step tests (issue 12): inventory + recorded facts -> the exact
commands a step runs (or, in dry-run, names) and the records it writes.

Every row goes through the one shared fake context (tests/unit/fakectx.py),
whose apply()/change() are the runner's own (tasks/core/step.py): a row checks
the step's Change as a real run and a dry run would apply it. Rows:

    (id, step, inventory overrides, facts, dry_run, answers, expected)

`step(ctx, inv, facts)` calls the resource; `facts` is a function of the
inventory (recorded fixture facts, or facts built for the case); `answers`
are the host's replies (FakeCtx.respond); `expected` is a dict of:
  steps     the records, [(step, status, message)] (message: exact, or a callable test)
  commands  the rendered commands run (callable of (inv, facts) -> list), [] when nothing ran
  would_run the dry run's would-run lines (callable, as commands)
  said      lines the step said (other than would-run lines)
  stdin     a test of the first command's stdin
  returns   a test of the step's return value
  raises    a substring of the StepFailed raised
"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tasks.config import platforms as plat
from tasks.config.app import app_spec
from tasks.config.inventory import load_inventory
from tasks.core.commands import become
from tasks.core.dotenv import sha256_hex
from tasks.core.errors import StepFailed
from tasks.facts.script import Cert, FileSpec, Stat, parse_facts, tar_payload
from tasks.resources import docker_files as D
from tasks.resources import envfile as E
from tasks.resources import nginx as N
from tasks.resources import swap as S
from tasks.resources import tls as T
from tasks.resources import units as U

from .fakectx import FakeCtx, answer

FIX = Path(__file__).parent / "fixtures"
DEBIAN = (FIX / "facts-debian12.txt").read_text()
DEB12 = plat.detect('ID=debian\nVERSION_ID="12"')

PASSWORD = b"s3cr3t-db-password-value\n"
CA = b"-----BEGIN CERTIFICATE-----\nMIIBdummy\n-----END CERTIFICATE-----\n"


# -- inventories and facts ----------------------------------------------------------------------

def base_inv(tmp: Path) -> dict:
    return {"hosts": {"static": {"web1": "10.0.0.1"}},
            "app": {"name": "app", "kind": "node", "port": 3000, "start": "node server.js"},
            "nginx": {"enabled": True}, "swap": {"size": "64M"},
            "deploy": {"source": "artifact", "artifact": str(tmp), "build": ["npm ci"]}}   # npm: a build uses it


def docker_inv(tmp: Path) -> dict:
    local = tmp / "local"
    local.mkdir(exist_ok=True)
    (local / "db-password").write_bytes(PASSWORD)
    (local / "db-password").chmod(0o600)
    (local / "db-ca.pem").write_bytes(CA)
    return {"hosts": {"static": {"h8": "10.231.0.18"}},
            "app": {"name": "svc", "kind": "docker", "port": 8080}, "nginx": {"enabled": False},
            "docker": {"image": "reg/svc", "container_port": 8080, "secrets_dir": "/opt/svc/secrets",
                       "secret_files": {"db-password": "local/db-password"}, "certs_dir": "/opt/svc/certs",
                       "cert_files": {"db-ca.pem": "local/db-ca.pem"}},
            "deploy": {"source": "image"}}


def merge(data: dict, over: dict) -> dict:
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(data.get(k), dict):
            merge(data[k], v)
        else:
            data[k] = v
    return data


def facts(**kw):
    """Facts of a host as the fact script reports them (empty but complete), with `kw` set."""
    f = parse_facts("@@ end\n")
    for k, v in kw.items():
        cur = getattr(f, k)
        if isinstance(cur, dict):
            cur.update(v)
        else:
            setattr(f, k, v)
    return f


def recorded(**kw):
    """The recorded facts of a bootstrapped Debian 12 sandbox host (tests/unit/fixtures)."""
    f = parse_facts(DEBIAN)
    for k, v in kw.items():
        setattr(f, k, v)
    return f


RUNNING = {"UnitFileState": "enabled", "ActiveState": "active", "LoadState": "loaded"}


def rendered(*cmds) -> list[str]:
    return [become(c, "root").render() for c in cmds]


# -- swap ---------------------------------------------------------------------------------------

def swap_step(ctx, inv, f):
    return S.apply_swap(ctx, f, inv.get("swap.size"), "/swapfile")


def swap_cmds(inv, f):
    return rendered(S.swap_script(S.plan_swap(f, inv.get("swap.size"), "/swapfile")))


FRESH_SWAP = dict(virt="none")
NSPAWN_SWAP = dict(virt="systemd-nspawn", swap_fs="btrfs")
SWAP_MADE = dict(stats={"/swapfile": Stat("regular file", "root", "root", "600", 64 * 1024 * 1024)},
                 fstab=[(2, "/swapfile none swap sw 0 0")])
CREATE = "create /swapfile (64M); fstab: add the swap line"

# -- units --------------------------------------------------------------------------------------

def the_unit(inv):
    from tasks.cli.bootstrap import app_unit

    return app_unit(app_spec(inv))


def units_step(ctx, inv, f):
    from tasks.cli.bootstrap import step_units

    return step_units(ctx, app_spec(inv), f)


def units_cmds(inv, f):
    u = the_unit(inv)
    return rendered(U.units_cmd([u], [U.enable_name(u, 3001)]))


def units_payload(inv):
    u = the_unit(inv)
    return tar_payload([FileSpec(u.path, u.content.encode())])


def units_current(inv):
    from tasks.core.templates import sha256

    u = the_unit(inv)
    return facts(sha256={u.path: sha256(u.content)}, units={"app@3001.service": RUNNING})


VERIFY_STDERR = ("systemd-analyze verify app@.service refused it:\n"
                 "/etc/systemd/system/app@3001.service:9: Unknown key name 'Bogus' in section 'Service'\n")

# -- nginx --------------------------------------------------------------------------------------

SITE = "/etc/nginx/sites-available/app.conf"


def site_files(inv, f):
    from tasks.cli.bootstrap import nginx_files

    return nginx_files(app_spec(inv), DEB12, inv.resolve_hosts(None)[0], f, None, False)


def nginx_step(ctx, inv, f):
    return N.nginx_apply(ctx, site_files(inv, f), facts=f)


def nginx_cmds(inv, f):
    return rendered(N.nginx_apply_cmd(site_files(inv, f)))


def nginx_current(inv):
    """Every file in place and nginx running."""
    from tasks.core.templates import sha256

    f = facts(units={"nginx.service": RUNNING})
    for fs in site_files(inv, f):
        if fs.kind == "file":
            f.stats[fs.path] = Stat("regular file", fs.owner, fs.group, format(int(fs.mode, 8), "o"), len(fs.content))
            f.sha256[fs.path] = sha256(fs.content)
        elif fs.kind == "link":
            f.links[fs.path] = fs.link
    return f


def nginx_site_stale(inv):
    f = nginx_current(inv)
    f.sha256[SITE] = "0" * 64
    f.contents[SITE] = "server { listen 80; }\n"
    return f


NGINX_TEST_STDERR = ('2026/11/22 00:40:16 [emerg] 5916#5916: unknown directive "bogus" in '
                     '/etc/nginx/sites-enabled/app.conf:3\nnginx: configuration file /etc/nginx/nginx.conf test failed\n')

# -- tls ----------------------------------------------------------------------------------------

TLS = {"tls": {"enabled": True, "domains": ["a.example"], "email": "ops@a.example", "method": "webroot"}}


def tls_of(inv):
    return T.tls_spec(inv, inv.resolve_hosts(None)[0])


def obtain_step(ctx, inv, f):
    return T.obtain(ctx, f, tls_of(inv), "/var/www/fabship-acme")


def certbot(inv, f):
    return T.certbot_cmd(tls_of(inv), "/var/www/fabship-acme", force=bool(f.certs.get("a.example")))


def support_step(ctx, inv, f):
    return T.apply_support(ctx, f, tls_of(inv), DEB12)


GOOD_CERT = {"a.example": Cert(True, True, "Jan  1 00:00:00 2099 GMT", "Pebble", ["a.example"])}
EXPIRING = {"a.example": Cert(True, False, "Dec  3 00:00:00 2026 GMT", "Pebble", ["a.example"])}

# -- docker files (the moved test_bootstrap_docker_files.test_step_messages) ------------------------

def docker_step(ctx, inv, f):
    return D.apply(ctx, D.plan(inv), f)


def docker_good():
    return facts(stats={"/opt/svc/secrets": Stat("directory", "root", "root", "700", 4096),
                        "/opt/svc/secrets/db-password": Stat("regular file", "root", "root", "400", len(PASSWORD)),
                        "/opt/svc/certs": Stat("directory", "root", "root", "755", 4096),
                        "/opt/svc/certs/db-ca.pem": Stat("regular file", "root", "root", "444", len(CA))},
                 sha256={"/opt/svc/secrets/db-password": sha256_hex(PASSWORD),
                         "/opt/svc/certs/db-ca.pem": sha256_hex(CA)})


def docker_cmds(inv, f):
    df = D.plan(inv)
    return rendered(D.apply_cmd(df, D.plan_changes(df, f))[0])

# -- env file -----------------------------------------------------------------------------------

ENV = b"DATABASE_URL=postgres://app:pw@db/app\n"
WANT = sha256_hex(ENV)
ENV_PATH = "/etc/app/app.env"


def env_step(ctx, inv, f):
    return E.install_env_file(ctx, ENV, ENV_PATH, "root", "app", "0600", keep_previous=5)


def env_preview_step(ctx, inv, f):
    return E.install_env_file(ctx, ENV, ENV_PATH, "root", "app", "0600", preview=lambda: "keys DATABASE_URL")


def env_cmds(inv, f):
    return rendered(E.install_cmd(ENV_PATH, "root", "app", "0600", WANT, 5))

# -- bootstrap steps ----------------------------------------------------------------------------

def packages_step(ctx, inv, f):
    from tasks.cli.bootstrap import step_packages

    return step_packages(ctx, app_spec(inv), DEB12, f, None)


def missing_packages(inv, f):
    from tasks.resources.packages import wanted_packages

    return [n for n in wanted_packages(app_spec(inv), DEB12, None) if n not in f.packages]


def runtime_step(ctx, inv, f):
    from tasks.cli.bootstrap import step_runtime

    return step_runtime(ctx, app_spec(inv), DEB12, f)


def docker_daemon(inv, f):
    from tasks.cli.bootstrap import docker_files

    return docker_files(app_spec(inv))


# -- release steps --------------------------------------------------------------------------------

RID = "20250101T000001Z-v1"


def lay_of(inv):
    from tasks.config.app import Layout

    return Layout.from_inventory(inv)


def record_step(ctx, inv, f):
    from tasks.release.record import record, release_entry

    ctx.data["entry"] = release_entry(RID, action="deploy", result="ok", previous=None)
    return record(ctx, lay_of(inv), ctx.data["entry"])


def record_written(ctx, got):
    from tasks.release.record import record_cmd

    return ctx.commands == rendered(record_cmd(ctx, lay_of(ctx.inv), ctx.data["entry"]))


def audit_step(ctx, inv, f):
    from tasks.release.audit import audit

    return audit(ctx, "rotate-env", RID, "ok", "env sha256 abc")


def snapshot_step(ctx, inv, f):
    from tasks.release.envsnap import snapshot_release_env

    return snapshot_release_env(ctx, RID)


def restore_step(ctx, inv, f):
    from tasks.release.envsnap import restore_release_env

    return restore_release_env(ctx, RID)


def restore_cmds(inv, f):
    from tasks.release.envsnap import EnvTarget, release_env_restore_cmd

    return rendered(release_env_restore_cmd(EnvTarget.from_inventory(inv), RID))


def health_step(ctx, inv, f):
    from tasks.release.health import check_health

    return check_health(ctx, 3001)


def lock_step(ctx, inv, f):
    from tasks.release.lock import acquire

    return acquire(ctx, "deploy", RID, wait=0)


def lock_read(inv, f):
    from tasks.release.lock import read_cmd

    return rendered(read_cmd(lay_of(inv)))


HOLDER = ('{"id": "x", "user": "ops", "pid": 1, "control_host": "laptop", "time": "2025-01-01T00:00:00Z", '
          '"epoch": 1735689600, "action": "deploy", "release": "R0"}')


def is_(value):
    return lambda got: got == value


def has(*parts):
    return lambda text: all(p in text for p in parts)


ROWS = [
    # swap --------------------------------------------------------------------------------------
    ("swap: fresh host, swapon works", swap_step, {}, lambda inv: facts(**FRESH_SWAP), False, ["swapon=ok\n"],
     dict(steps=[("swap", "changed", CREATE)], commands=swap_cmds)),
    ("swap: fresh host, dry run", swap_step, {}, lambda inv: facts(**FRESH_SWAP), True, [],
     dict(steps=[("swap", "changed", CREATE)], commands=[], would_run=swap_cmds)),
    ("swap: container refuses swapon: file changed + activate skipped", swap_step, {},
     lambda inv: facts(**NSPAWN_SWAP), False,
     ["swapon=failed swapon: /swapfile: swapon failed: Operation not permitted\nvirt=systemd-nspawn\n"],
     dict(steps=[("swap", "changed", CREATE),
                 ("swap (activate)", "skipped", "swapon not permitted in this container (systemd-nspawn, swap file "
                                                "on btrfs): swapon: /swapfile: swapon failed: Operation not permitted")],
          commands=swap_cmds)),
    ("swap: swapon fails outside a container", swap_step, {}, lambda inv: facts(**FRESH_SWAP), False,
     ["swapon=failed swapon: /swapfile: Invalid argument\nvirt=none\n"],
     dict(steps=[("swap", "failed", f"swapon /swapfile failed: swapon: /swapfile: Invalid argument (after: {CREATE})")],
          raises="swap: swapon /swapfile failed")),
    ("swap: the script fails", swap_step, {}, lambda inv: facts(**FRESH_SWAP), False, [answer(1, "", "mkswap: error")],
     dict(steps=[("swap", "failed", f"{CREATE}: failed (exit 1)")], raises=f"swap: {CREATE}: failed (exit 1)")),
    ("swap: in place but inactive on overlayfs: not retried", swap_step, {},
     lambda inv: facts(virt="systemd-nspawn", swap_fs="overlayfs", **SWAP_MADE), False, [],
     dict(steps=[("swap", "skipped", "swapon not permitted in this container (systemd-nspawn, swap file on "
                                     "overlayfs); /swapfile (64M, 0600) and its fstab line are in place")],
          commands=[])),
    ("swap: active, in fstab once", swap_step, {},
     lambda inv: facts(swaps=[{"name": "/swapfile", "size": 64 * 1024 * 1024}], **SWAP_MADE), False, [],
     dict(steps=[("swap", "ok", "/swapfile 64M active, in fstab once")], commands=[])),
    # systemd units -----------------------------------------------------------------------------
    ("units: fresh host: install, reload, enable", units_step, {}, lambda inv: facts(), False,
     ["installed app@.service\nenabled app@3001.service\n"],
     dict(steps=[("systemd units", "changed", "installed app@.service; enabled app@3001.service (daemon-reload)")],
          commands=units_cmds, stdin=lambda inv, got: got == units_payload(inv))),
    ("units: verify refuses the new unit (exit 5)", units_step, {}, lambda inv: facts(), False,
     [answer(5, "", VERIFY_STDERR)],
     dict(steps=[("systemd units", "failed", "systemd-analyze verify refused the new unit (nothing installed): "
                                             "/etc/systemd/system/app@3001.service:9: Unknown key name 'Bogus' in "
                                             "section 'Service'")],
          raises="systemd units: systemd-analyze verify refused", commands=units_cmds)),
    ("units: any other exit", units_step, {}, lambda inv: facts(), False, [answer(1, "", "boom")],
     dict(steps=[("systemd units", "failed", "install app@.service; enable app@3001.service: failed (exit 1)")],
          raises="failed (exit 1)")),
    ("units: the script found them in place", units_step, {}, lambda inv: facts(), False, [""],
     dict(steps=[("systemd units", "ok", "up to date")])),
    ("units: dry run shows the unit's diff", units_step, {},
     lambda inv: facts(sha256={"/etc/systemd/system/app@.service": "0" * 64},
                       contents={"/etc/systemd/system/app@.service": "[Unit]\nDescription=old\n"},
                       units={"app@3001.service": RUNNING}), True, [],
     dict(steps=[("systemd units", "changed", "install app@.service")], commands=[], would_run=units_cmds,
          said=has("--- /etc/systemd/system/app@.service", "-Description=old"))),
    ("units: up to date per the facts", units_step, {}, units_current, False, [],
     dict(steps=[("systemd units", "ok", "app@.service up to date; enabled app@3001.service")], commands=[])),
    # nginx -------------------------------------------------------------------------------------
    ("nginx: site differs: written, tested, reloaded", nginx_step, {}, nginx_site_stale, False,
     [f"wrote {SITE}\nreloaded\n"],
     dict(steps=[("nginx", "changed", f"wrote {SITE}; reloaded")], commands=nginx_cmds,
          returns=lambda r: (r.changed, r.lines) == (True, [f"wrote {SITE}", "reloaded"]))),
    ("nginx: nginx -t rejects it (exit 6): restored", nginx_step, {}, nginx_site_stale, False,
     [answer(6, "", NGINX_TEST_STDERR)],
     dict(steps=[("nginx", "failed", "nginx -t rejected the new config; previous files restored, nginx still "
                                     "serving the old config: [emerg] unknown directive \"bogus\" in "
                                     "/etc/nginx/sites-enabled/app.conf:3")],
          raises="nginx: nginx -t rejected the new config")),
    ("nginx: any other exit", nginx_step, {}, nginx_site_stale, False, [answer(7, "", "reload failed")],
     dict(steps=[("nginx", "failed", f"write {SITE}: failed (exit 7)")], raises="failed (exit 7)")),
    ("nginx: dry run names the test and shows the diff", nginx_step, {}, nginx_site_stale, True, [],
     dict(steps=[("nginx", "changed", f"write {SITE} (then nginx -t, reload)")], commands=[],
          would_run=nginx_cmds, said=has(f"--- {SITE}", "-server { listen 80; }"),
          returns=lambda r: (r.changed, r.lines) == (True, []))),
    ("nginx: up to date and running", nginx_step, {}, nginx_current, False, [],
     dict(steps=[("nginx", "ok", "site and upstream up to date; nginx running")], commands=[],
          returns=lambda r: not r.changed)),
    ("nginx: stopped: enable and start", nginx_step, {}, lambda inv: _stopped(nginx_current(inv)), True, [],
     dict(steps=[("nginx", "changed", "enable and start nginx")], commands=[], would_run=nginx_cmds)),
    ("nginx: the script changed nothing", nginx_step, {}, nginx_site_stale, False, [""],
     dict(steps=[("nginx", "ok", "up to date")], returns=lambda r: (r.changed, r.lines) == (False, []))),
    # tls ---------------------------------------------------------------------------------------
    ("tls: no certificate: certbot obtains one", obtain_step, TLS, lambda inv: facts(), False, ["ok"],
     dict(steps=[("tls", "changed", "no certificate for a.example yet: obtained a certificate for a.example")],
          commands=lambda inv, f: rendered(T.with_acme_retries(certbot(inv, f))), returns=is_(True))),
    ("tls: dry run names certbot, not its retry wrapper", obtain_step, TLS, lambda inv: facts(), True, [],
     dict(steps=[("tls", "changed", "no certificate for a.example yet: request one from "
                                    "https://acme-v02.api.letsencrypt.org/directory")],
          commands=[], would_run=lambda inv, f: rendered(certbot(inv, f)), returns=is_(False))),
    ("tls: certbot fails: its reason, HTTP keeps serving", obtain_step, TLS, lambda inv: facts(certs=EXPIRING),
     False, [answer(1, "", "Saving debug log to /var/log/letsencrypt/letsencrypt.log\n"
                          "Detail: 10.0.0.1: Fetching http://a.example/.well-known/acme-challenge/x: "
                          "Connection refused\n")],
     dict(steps=[("tls", "failed", "certbot failed for a.example: Detail: 10.0.0.1: Fetching "
                                   "http://a.example/.well-known/acme-challenge/x: Connection refused; the site "
                                   "keeps serving plain HTTP")],
          commands=lambda inv, f: rendered(T.with_acme_retries(certbot(inv, f))), raises="tls: certbot failed")),
    ("tls: a valid certificate is kept", obtain_step, TLS, lambda inv: facts(certs=GOOD_CERT), False, [],
     dict(steps=[("tls", "skipped", "valid certificate for a.example until Jan  1 00:00:00 2099 GMT")],
          commands=[], returns=is_(False))),
    ("tls renewal: timer off: enabled", support_step, TLS, lambda inv: facts(), False, [],
     dict(steps=[("tls renewal", "changed", "enable --now certbot.timer")],
          commands=lambda inv, f: rendered(T.support_cmd([], "certbot.timer")))),
    ("tls renewal: dry run", support_step, TLS, lambda inv: facts(), True, [],
     dict(steps=[("tls renewal", "changed", "enable --now certbot.timer")], commands=[],
          would_run=lambda inv, f: rendered(T.support_cmd([], "certbot.timer")))),
    ("tls renewal: the script fails", support_step, TLS, lambda inv: facts(), False, [answer(1, "", "no timer")],
     dict(steps=[("tls renewal", "failed", "enable --now certbot.timer: failed (exit 1)")], raises="failed (exit 1)")),
    ("tls renewal: timer running", support_step, TLS, lambda inv: facts(units={"certbot.timer": RUNNING}), False, [],
     dict(steps=[("tls renewal", "ok", "certbot.timer enabled")], commands=[])),
    # docker files ------------------------------------------------------------------------------
    ("docker files: dry run names files only, nothing on stdin", docker_step, docker_inv, lambda inv: facts(),
     True, [],
     dict(steps=[("docker files", "changed", "create /opt/svc/secrets (root:root 0700); write secrets/db-password "
                                             "(new); create /opt/svc/certs (root:root 0755); write certs/db-ca.pem "
                                             "(new)")],
          commands=[], would_run=docker_cmds, returns=is_(True))),
    ("docker files: the real run reports hashes, the content only on stdin", docker_step, docker_inv,
     lambda inv: facts(), False, [],
     dict(steps=[("docker files", "changed",
                  has(f"secrets/db-password: sha256 (new file) -> {sha256_hex(PASSWORD)[:12]}"))],
          commands=docker_cmds, stdin=lambda inv, got: PASSWORD in got,
          returns=is_(True))),
    ("docker files: up to date", docker_step, docker_inv, lambda inv: docker_good(), False, [],
     dict(steps=[("docker files", "ok", "/opt/svc/secrets (1 file), /opt/svc/certs (1 file) up to date")],
          commands=[], returns=is_(False))),
    # env file ----------------------------------------------------------------------------------
    ("env file: new file", env_step, {}, lambda inv: facts(), False, [f"changed\nold=-\nnew={WANT}\n"],
     dict(steps=[("env file", "changed", f"{ENV_PATH}: sha256 (new file) -> {WANT[:12]} (root:app 0600)")],
          commands=env_cmds, stdin=lambda inv, got: got == ENV,
          returns=lambda r: (r.changed, r.old_sha, r.new_sha) == (True, None, WANT))),
    ("env file: rotated", env_step, {}, lambda inv: facts(), False, [f"changed\nold={'a' * 64}\nnew={WANT}\n"],
     dict(steps=[("env file", "changed", f"{ENV_PATH}: sha256 {'a' * 12} -> {WANT[:12]} (root:app 0600)")],
          returns=lambda r: (r.changed, r.old_sha) == (True, "a" * 64))),
    ("env file: unchanged", env_step, {}, lambda inv: facts(), False, [f"unchanged\nold={WANT}\nnew={WANT}\n"],
     dict(steps=[("env file", "ok", f"{ENV_PATH} up to date (sha256 {WANT[:12]})")],
          returns=lambda r: (r.changed, r.old_sha) == (False, WANT))),
    ("env file: install fails", env_step, {}, lambda inv: facts(), False, [answer(4, "", "upload incomplete")],
     dict(steps=[("env file", "failed", f"installing {ENV_PATH} failed (exit 4)")], raises="installing")),
    ("env file: dry run", env_step, {}, lambda inv: facts(), True, [],
     dict(steps=[("env file", "changed", f"{ENV_PATH} would be written (sha256 {WANT[:12]}, root:app 0600)")],
          commands=[], would_run=env_cmds, returns=lambda r: (r.changed, r.old_sha) == (True, None))),
    ("env file: dry run with bootstrap's key preview names no command", env_preview_step, {}, lambda inv: facts(),
     True, [], dict(steps=[("env file", "changed", "keys DATABASE_URL")], commands=[], would_run=[])),
    # bootstrap: packages, runtime --------------------------------------------------------------
    ("packages: recorded host has them all", packages_step, {}, lambda inv: recorded(), False, [],
     dict(steps=[("packages", "ok", has(" present"))], commands=[], returns=is_(False))),
    ("packages: one call for the missing ones", packages_step, {}, lambda inv: facts(), False, [],
     dict(steps=[("packages", "changed", "install curl openssl ca-certificates nginx nodejs npm")],
          commands=lambda inv, f: rendered(plat.install_cmd(DEB12, missing_packages(inv, f))), returns=is_(True))),
    ("packages: dry run", packages_step, {}, lambda inv: facts(), True, [],
     dict(steps=[("packages", "changed", "install curl openssl ca-certificates nginx nodejs npm")], commands=[],
          would_run=lambda inv, f: rendered(plat.install_cmd(DEB12, missing_packages(inv, f))),
          returns=is_(True))),
    ("runtime: Node.js from the recorded facts", runtime_step, {}, lambda inv: recorded(), False, [],
     dict(steps=[("runtime", "ok", "Node.js 18.20.4+dfsg-1~deb12u3 with npm")], commands=[])),
    ("runtime: Node.js the packages step just installed", runtime_step, {}, lambda inv: facts(), False, [],
     dict(steps=[("runtime", "ok", "Node.js (installed) with npm")], commands=[])),
    ("runtime: dry run: Node.js comes with the packages step", runtime_step, {}, lambda inv: facts(), True, [],
     dict(steps=[("runtime", "ok", "Node.js comes with the packages step")], commands=[], would_run=[])),
    ("runtime: docker daemon.json and start", runtime_step, {"app": {"kind": "docker", "port": 8080},
                                                            "docker": {"image": "reg/app", "container_port": 8080}},
     lambda inv: facts(), False, [],
     dict(steps=[("runtime", "changed", "write /etc/docker/daemon.json; enable and start docker")],
          stdin=lambda inv, got: got == tar_payload(docker_daemon(inv, None)))),
    ("runtime: docker dry run shows daemon.json", runtime_step, {"app": {"kind": "docker", "port": 8080},
                                                                "docker": {"image": "reg/app", "container_port": 8080}},
     lambda inv: facts(), True, [],
     dict(steps=[("runtime", "changed", "write /etc/docker/daemon.json; enable and start docker")], commands=[],
          said=has("+++ /etc/docker/daemon.json"))),
    # release steps -----------------------------------------------------------------------------
    ("release log: one command, no step of its own", record_step, {}, lambda inv: None, False, [],
     dict(steps=[], check=record_written)),
    ("release log: a dry run writes nothing", record_step, {}, lambda inv: None, True, [],
     dict(steps=[], commands=[], said=is_(""))),
    ("audit: a failed append is one warning", audit_step, {}, lambda inv: None, False,
     [answer(1, "", "No space left on device")],
     dict(steps=[], said=has("warning: could not append to", "audit.log: No space left on device"))),
    ("audit: a dry run writes nothing", audit_step, {}, lambda inv: None, True, [],
     dict(steps=[], commands=[], said=is_(""))),
    ("env snapshot: its sha256", snapshot_step, {}, lambda inv: None, False, ["snapshot " + "b" * 64 + "\n"],
     dict(steps=[], returns=is_("b" * 64))),
    ("env snapshot: a dry run takes none", snapshot_step, {}, lambda inv: None, True, [],
     dict(steps=[], commands=[], returns=is_(None))),
    ("env restore: changed", restore_step, {}, lambda inv: None, False, [f"changed old={'a' * 64} new={'b' * 64}\n"],
     dict(steps=[("env file", "changed", f"/etc/app/app.env: restored the env of {RID} (sha256 {'a' * 12} -> "
                                         f"{'b' * 12})")], commands=restore_cmds, returns=is_("changed"))),
    ("env restore: unchanged", restore_step, {}, lambda inv: None, False, ["unchanged\n"],
     dict(steps=[("env file", "ok", f"/etc/app/app.env already is the env of {RID}")], returns=is_("unchanged"))),
    ("env restore: no snapshot", restore_step, {}, lambda inv: None, False, ["missing\n"],
     dict(steps=[("env file", "skipped", f"no env snapshot for {RID}: env file left as it is")],
          returns=is_("missing"))),
    ("env restore: dry run", restore_step, {}, lambda inv: None, True, [],
     dict(steps=[("env file", "changed", f"restore the env file release {RID} ran with (if it differs)")],
          commands=[], would_run=restore_cmds, returns=is_("changed"))),
    ("health check: a dry run checks nothing", health_step, {}, lambda inv: None, True, [],
     dict(steps=[("health check", "ok", "http://127.0.0.1:3001/health (dry run: not checked)")], commands=[],
          would_run=[], returns=lambda h: (h.ok, h.error) == (True, "dry run"))),
    ("health check: answers", health_step, {}, lambda inv: None, False, ["FABSHIP_HEALTH ok 1 200\n\nok\n"],
     dict(steps=[("health check", "ok", has("200"))], returns=lambda h: (h.ok, h.status) == (True, 200))),
    ("health check: unhealthy is returned, not raised", health_step, {}, lambda inv: None, False,
     ["FABSHIP_HEALTH fail 3 500\nHTTP 500\noops\n"],
     dict(steps=[], returns=lambda h: (h.ok, h.status, h.attempts) == (False, 500, 3))),
    ("deploy lock: a dry run reads it and takes nothing", lock_step, {}, lambda inv: None, True, [""],
     dict(steps=[("deploy lock", "ok", "free (dry run: not taken)")], commands=lock_read, returns=is_({}),
          dry_reads=True)),
    ("deploy lock: a dry run refuses a held lock", lock_step, {}, lambda inv: None, True,
     ["FABSHIP_LOCK_HELD " + HOLDER + "\n"],
     dict(steps=[], commands=lock_read, lock_error="STALE deploy lock held by ops (pid 1 on laptop): deploy of R0 since 2025-01-01",
          dry_reads=True)),
    ("deploy lock: taken", lock_step, {}, lambda inv: None, False, ["FABSHIP_LOCK_ACQUIRED\n"],
     dict(steps=[], check=lambda ctx, got: len(ctx.commands) == 1 and got["action"] == "deploy"
          and got["release"] == RID and ctx.data["lock_holder"] is got)),
    ("runtime: docker's start fails", runtime_step, {"app": {"kind": "docker", "port": 8080},
                                                    "docker": {"image": "reg/app", "container_port": 8080}},
     lambda inv: facts(), False, [answer(1, "", "Job for docker.service failed")],
     dict(steps=[("runtime", "failed", "write /etc/docker/daemon.json; enable and start docker: failed (exit 1)")],
          raises="runtime: write /etc/docker/daemon.json")),
]


def _stopped(f):
    f.units["nginx.service"] = {"UnitFileState": "disabled", "ActiveState": "inactive", "LoadState": "loaded"}
    return f


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_step(row, tmp_path):
    _id, step, over, make_facts, dry_run, answers, want = row
    data = over(tmp_path) if callable(over) else merge(base_inv(tmp_path), over)
    p = tmp_path / "inv.yaml"
    p.write_text(yaml.safe_dump(data))
    inv = load_inventory(str(p))
    f = make_facts(inv)
    ctx = FakeCtx(inv, dry_run=dry_run, answers=list(answers))
    if "raises" in want:
        with pytest.raises(StepFailed) as e:
            step(ctx, inv, f)
        assert want["raises"] in e.value.message
        got = None
    elif "lock_error" in want:
        from tasks.core.errors import LockError

        with pytest.raises(LockError) as e:
            step(ctx, inv, f)
        assert want["lock_error"] in str(e.value)
        got = None
    else:
        got = step(ctx, inv, f)
    if "steps" in want:
        assert len(ctx.steps) == len(want["steps"]), ctx.steps
        for (name, status, msg), (wname, wstatus, wmsg) in zip(ctx.steps, want["steps"]):
            assert (name, status) == (wname, wstatus), ctx.steps
            assert wmsg(msg) if callable(wmsg) else msg == wmsg, msg
    for key, seen in (("commands", ctx.commands), ("would_run", ctx.would_run)):
        if key in want:
            expect = want[key](inv, f) if callable(want[key]) else want[key]
            if key == "would_run":   # the dry run's lines are shortened to 300 characters
                from tasks.core.step import short
                expect = [short(c, 300) for c in expect]
            assert seen == expect
    if dry_run and not want.get("dry_reads"):
        assert ctx.commands == [], "a dry run runs nothing"
    if "said" in want:
        said = "\n".join(s for s in ctx.said if not s.startswith("  would run: "))
        assert want["said"](said), said
    if "stdin" in want:
        assert want["stdin"](inv, ctx.stdins[0])
    if "returns" in want:
        assert want["returns"](got), got
    if "check" in want:
        assert want["check"](ctx, got), (ctx.commands, got)


def test_the_secret_never_reaches_a_record_or_a_command_line(tmp_path):
    p = tmp_path / "inv.yaml"
    p.write_text(yaml.safe_dump(docker_inv(tmp_path)))
    inv = load_inventory(str(p))
    ctx = FakeCtx(inv)
    D.apply(ctx, D.plan(inv), facts())
    secret = PASSWORD.decode().strip()
    assert secret not in ctx.steps[0][2] and all(secret not in c for c in ctx.commands)
    assert PASSWORD in ctx.stdins[0]
