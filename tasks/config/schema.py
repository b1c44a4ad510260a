"""The inventory schema: every key an inventory may hold, its type and default.

One section per concern. Unknown keys anywhere are errors.
"""
from __future__ import annotations

import re

from .schema_types import (
    Any_,
    Bool,
    Enum,
    F,
    Int,
    List,
    Map,
    Mode,
    Number,
    OneOfShapes,
    RelPath,
    SchemaError,
    Size,
    Str,
    Struct,
    dotted,
)

NAME = r"[A-Za-z0-9][A-Za-z0-9_.\-]*"
NAME_RE = re.compile(NAME)
ENV_KEY = r"[A-Za-z_][A-Za-z0-9_]*"
ADDRESS = Str(r"[A-Za-z0-9_.:\-\[\]]+", "a host name or IP address")
ABS_PATH = Str(r"/.*", "an absolute path (starting with /)")


# -- names that reach nginx, ssh_config and file names (checked again after {host}/{address}
# expansion: tasks/config/inventory.py check_expanded) ------------------------------------------------
PLACEHOLDER = r"\{host\}|\{address\}"
# nginx server_name: names (wildcards, ~regex) separated by single spaces; no ';', quote, '#',
# brace (but the placeholders) or whitespace inside a name: nothing that ends the directive
_SERVER_NAME = rf"(?:[^\s;{{}}'\"#]|{PLACEHOLDER})+"
SERVER_NAMES = Str(rf"{_SERVER_NAME}(?: {_SERVER_NAME})*",
                   "server names separated by spaces (no ';', quotes, '#', braces or line breaks)")
DOMAIN = Str(rf"(?:[A-Za-z0-9*._\-]|{PLACEHOLDER})+", "a domain name such as app.example.com")
# a login name (ssh.user, a host's user): it is written into ssh_config and sudo lines
USER_NAME = Str(r"[A-Za-z_][A-Za-z0-9_.\-]*\$?", "a user name (letters, digits, '_', '.', '-')")

# -- hosts -------------------------------------------------------------------

STATIC_HOST = Struct({
    "address": F(ADDRESS, required=True),
    "user": F(USER_NAME),
    "port": F(Int(1, 65535)),
    "tags": F(Map(Str(non_empty=False)), default={}),
    "groups": F(List(Str(NAME, "a group name")), default=[]),
    "vars": F(Map(Any_()), default={}),
})


def _static_selector(value):
    if isinstance(value, list):
        return List(ADDRESS, min_items=1)
    if isinstance(value, dict):
        return Map(OneOfShapes(
            lambda v: ADDRESS if isinstance(v, str) else STATIC_HOST if isinstance(v, dict) else None,
            "an address, or a mapping with address/user/port/tags/groups/vars",
        ), NAME, "letters, digits, '.', '_' or '-'")
    return None


STATIC = OneOfShapes(_static_selector, "a list of addresses, or a mapping of host name to address")

EC2 = Struct({
    "region": F(Str(r"[a-z]{2}(-[a-z]+)+-\d", "an AWS region such as eu-west-1"), required=True),
    "filters": F(Map(OneOfShapes(
        lambda v: Str() if isinstance(v, (str, int)) and not isinstance(v, bool)
        else List(Str(), min_items=1) if isinstance(v, list) else None,
        "a value or a list of values",
    )), default={}),
    "address": F(Enum("private_ip", "public_ip", "public_dns"), default="private_ip"),
    "name_tag": F(Str(), default="Name"),
    "max_hosts": F(Int(1)),
    "profile": F(Str()),
    "endpoint_url": F(Str(r"https?://.+", "an http(s) URL")),
    "groups": F(List(Str(NAME, "a group name")), default=[]),
})


def _one_provider(value, path):
    given = [k for k in ("static", "ec2") if value.get(k) is not None]
    if len(given) != 1:
        raise SchemaError(path, "expected exactly one host source: 'static' or 'ec2'"
                          + (" (got both)" if len(given) == 2 else " (got none)"))


HOSTS = Struct({"static": F(STATIC), "ec2": F(EC2)}, validator=_one_provider, fill_default=False)

def _ssh_link_defaults(ssh: dict, path: tuple = ()) -> None:
    """Unset link options stay out of the section (tasks/core/ssh.py LINK_DEFAULTS
    holds their defaults), so it reads as it did before they existed."""
    for k in ("forward_agent", "keepalive", "dead_after", "via", "ssm", "wait"):
        if ssh.get(k) is None:
            ssh.pop(k, None)
    if ssh.get("via") == "ssm" and ssh.get("jump_host"):
        raise SchemaError(path + ("via",), "ssm reaches the instance itself: leave ssh.jump_host out")
    if ssh.get("ssm") and ssh.get("via") != "ssm":
        raise SchemaError(path + ("ssm",), "only used with ssh.via: ssm")


# ssh.via: ssm (tasks/core/ssh.py ssm_proxy_argv): Session Manager's AWS-StartSSHSession
# document as the connection's proxy command; region defaults to hosts.ec2.region
SSM = Struct({
    "region": F(Str(r"[a-z]{2}(-[a-z]+)+-\d", "an AWS region such as eu-west-1")),
    "profile": F(Str(r"[A-Za-z0-9_.+=@-]+", "an AWS profile name")),
    "document": F(Str(r"[A-Za-z0-9_.:/-]+", "an SSM document name"), default="AWS-StartSSHSession"),
}, fill_default=False)


_ONE_JUMP = r"(?:[A-Za-z0-9._-]+@)?(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?"
JUMP_HOST = rf"{_ONE_JUMP}(?:,{_ONE_JUMP})*"

SSH = Struct({
    "user": F(USER_NAME, default="root"),
    "key_file": F(Str()),
    "port": F(Int(1, 65535), default=22),
    "known_hosts": F(Str(), default="~/.ssh/known_hosts"),
    "connect_timeout": F(Number(min=1), default=10),
    "command_timeout": F(Number(min=1), default=1800),
    # bastion(s) for hosts on private addresses, as `ssh -J` (a,b: through a, then b):
    # checked against the same known_hosts, authenticated with the same key (or agent)
    "jump_host": F(Str(JUMP_HOST, "[user@]host[:port][,...], as for ssh -J")),
    # the agent reaches root shells on the hosts only when asked (~/.ssh/config is never read)
    "forward_agent": F(Bool()),
    # a keepalive every N seconds (0: none); a link that misses dead_after in a row is failed
    "keepalive": F(Number(min=0)),
    "dead_after": F(Int(1)),
    # hosts with no inbound SSH: through AWS Systems Manager Session Manager
    "via": F(Enum("ssm")),
    "ssm": F(SSM),
    # fresh hosts: retry connecting (refused, timeout, banner) for up to N seconds, then wait
    # for `cloud-init status --wait` where cloud-init exists
    "wait": F(Number(min=0)),
}, validator=_ssh_link_defaults)

GROUP = Struct({
    "hosts": F(List(Str(NAME, "a host name")), default=[]),
    "tags": F(Map(Str(non_empty=False)), default={}),
    "vars": F(Map(Any_()), default={}),
})

# -- app and what bootstrap builds ---------------------------------------------

UNIT = Struct({
    "restart_sec": F(Int(0), default=5),
    "hardening": F(Bool(), default=True),
    "environment": F(Map(Str(non_empty=False), ENV_KEY, "an environment variable name"), default={}),
    "after": F(List(Str()), default=["network-online.target"]),
    "extra": F(Map(Str(non_empty=False)), default={}),
})

APP = Struct({
    "name": F(Str(NAME, "an app name (letters, digits, '.', '_' or '-')"), required=True),
    "kind": F(Enum("node", "docker", "compose", "python", "static"), required=True),
    "user": F(Str(NAME, "a user name")),
    "group": F(Str(NAME, "a group name")),
    "root": F(ABS_PATH),
    "config_dir": F(ABS_PATH),
    "port": F(Int(1, 65535)),
    "start": F(Str()),
    "root_mode": F(Mode(), default="0755"),
    "config_dir_mode": F(Mode(), default="0750"),
    # relative to /opt/APP/shared and to each release (see _shared_paths)
    "shared_dirs": F(List(RelPath()), default=[]),
    "shared_files": F(List(RelPath()), default=[]),
    "node_version": F(Str(r"\d+", "a Node.js major version such as 20")),
    "python_version": F(Str(r"3(\.\d+)?", "a Python 3 version such as 3.11")),
    "unit": F(UNIT),
}, fill_default=False, validator=lambda v, p: _shared_paths(v, p))


def _shared_paths(app: dict, path: tuple) -> None:
    """Shared dirs/files are links in the release to /opt/APP/shared/<path>.
    One inside another (or the same path twice) would make deploy remove the
    shared data through the first link; `.fabship*` names are fabship's own."""
    seen: list[tuple[str, tuple]] = []
    for key in ("shared_dirs", "shared_files"):
        for i, p in enumerate(app.get(key) or []):
            where = path + (key, i)
            if p.split("/")[0].startswith(".fabship"):
                raise SchemaError(where, f"{p!r}: names starting with .fabship are fabship's own")
            for other, other_where in seen:
                if p == other or p.startswith(other + "/") or other.startswith(p + "/"):
                    what = "the same path as" if p == other else "inside" if p.startswith(other + "/") else \
                        "the parent of"
                    raise SchemaError(where, f"{p!r} is {what} {dotted(other_where)} ({other!r}): "
                                             "each shared path must stand alone")
            seen.append((p, where))

SWAP = Struct({
    "size": F(Size(), required=True),
    "path": F(ABS_PATH, default="/swapfile"),
}, fill_default=False)

NGINX = Struct({
    "enabled": F(Bool(), default=True),
    "server_name": F(SERVER_NAMES),
    "client_max_body_size": F(Size(), default="10M"),
    "websocket": F(Bool(), default=True),
    "proxy_read_timeout": F(Int(1), default=60),
    "remove_default_site": F(Bool(), default=True),
    # fab maintenance on|off (tasks/cli/maintenance.py): 503 with this page, health/ACME paths excepted
    "maintenance": F(Struct({
        "page": F(Str()),   # a local HTML file (relative to the inventory that set it); default: fabship's
        "retry_after": F(Int(1), default=300),
        "allow_paths": F(List(Str(r"/[A-Za-z0-9._~!*+,=:@%/-]+", "a URL path such as /api/status (letters, "
                                                              "digits and . _ ~ ! * + , = : @ % / -)")), default=[]),
    })),
}, fill_default=False)

TLS = Struct({
    "enabled": F(Bool(), default=False),
    "email": F(Str(r"[^@\s]+@[^@\s]+", "an e-mail address")),
    "domains": F(List(DOMAIN, single_ok=True), default=[]),
    "method": F(Enum("nginx", "webroot"), default="nginx"),
    "acme_server": F(Str(r"https?://.+", "an ACME directory URL")),
    "acme_ca_file": F(Str()),
    "min_days": F(Int(1), default=30),
})

# A host directory bind-mounted into containers: absolute, and no ',' or ':' (docker's mount syntax).
MOUNT_DIR = Str(r"/[^,:]*[^,:/]", "an absolute directory path (starting with /) without ',' or ':'")
# A file in a managed directory: a plain name, not hidden, no '/'.
FILE_NAME = r"[A-Za-z0-9_][A-Za-z0-9_.@+=\-]*"
FILE_NAME_EXPECTED = "a file name (letters, digits, '.', '_', '-', '@', '+', '='; no '/', not starting with '.')"

DOCKER = Struct({
    "registry": F(Str()),
    "insecure_registries": F(List(Str()), default=[]),
    "image": F(Str()),
    "container_port": F(Int(1, 65535)),
    "run_args": F(List(Str()), default=[]),
    "restart": F(Enum("no", "always", "unless-stopped", "on-failure"), default="unless-stopped"),
    # Credentials as files (tasks/resources/docker_files.py): dir 0700, files 0400, owner secrets_owner
    # (default root: the container reads them as root); deploy mounts the dir read-only at
    # secrets_mount. Certificates: dir 0755, files 0444 (public), mounted read-only at certs_mount.
    # Map values are local files; a relative path is relative to the inventory file that set it.
    "secrets_dir": F(MOUNT_DIR),
    "secret_files": F(Map(Str(), FILE_NAME, FILE_NAME_EXPECTED), default={}),
    "secrets_owner": F(Str(r"[A-Za-z_][A-Za-z0-9_.\-]*", "a user name on the host (not a numeric id)"),
                       default="root"),
    "secrets_group": F(Str(r"[A-Za-z_][A-Za-z0-9_.\-]*", "a group name on the host (not a numeric id)"),
                       default="root"),
    "secrets_mount": F(MOUNT_DIR, default="/run/secrets"),
    "certs_dir": F(MOUNT_DIR),
    "cert_files": F(Map(Str(), FILE_NAME, FILE_NAME_EXPECTED), default={}),
    "certs_mount": F(MOUNT_DIR, default="/certs"),
    "compose_file": F(Str()),
    "compose_project": F(Str()),
    "compose_tag_vars": F(List(Str(ENV_KEY, "a variable name")), default=["TAG"]),
})

# -- env file and its contract -------------------------------------------------

RULE = Struct({
    "non_empty": F(Bool()),
    "min_length": F(Int(0)),
    "max_length": F(Int(1)),
    "hex": F(Bool()),
    "base64": F(Bool()),
    "url": F(Bool()),
    "one_of": F(List(Str(non_empty=False), min_items=1)),
    "int_range": F(List(Int(), min_items=2)),
    "pattern": F(Str()),
}, fill_default=False)

CONTRACT = Struct({
    "required": F(List(Str(ENV_KEY, "an environment variable name")), default=[]),
    "optional": F(List(Str(ENV_KEY, "an environment variable name")), default=[]),
    "allow_unknown": F(Bool(), default=False),
    "rules": F(Map(RULE, ENV_KEY, "an environment variable name"), default={}),
    "differ_from": F(List(Str()), default=[]),
    "differ_keys": F(List(Str(ENV_KEY, "an environment variable name")), default=[]),
})

ENV_SOURCE = Struct({
    "type": F(Enum("file", "secretsmanager", "ssm"), default="file"),
    "file": F(Str()),
    "secret_id": F(Str()),
    "format": F(Enum("auto", "json", "dotenv"), default="auto"),
    "path": F(Str(r"/.*", "an SSM parameter path starting with /")),
    "region": F(Str()),
    "profile": F(Str()),
    "endpoint_url": F(Str(r"https?://.+", "an http(s) URL")),
}, fill_default=False)

ENV = Struct({
    "path": F(ABS_PATH),
    "owner": F(Str(), default="root"),
    "group": F(Str()),
    "mode": F(Mode(), default="0600"),
    # env.mode with group bits (e.g. 0640) is refused unless this says it is meant (check_env_mode)
    "group_readable": F(Bool(), default=False),
    "keep_previous": F(Int(0), default=5),
    "source": F(ENV_SOURCE),
    "contract": F(CONTRACT),
}, fill_default=False)

# -- deploy, health, verify ---------------------------------------------------

HEALTH = Struct({
    "path": F(Str(r"/.*", "a URL path starting with /"), default="/health"),
    "port": F(Int(1, 65535)),
    "scheme": F(Enum("http", "https"), default="http"),
    "method": F(Enum("GET", "HEAD", "POST"), default="GET"),
    "headers": F(Map(Str(non_empty=False)), default={}),
    "expect_status": F(Int(100, 599), default=200),
    "body_contains": F(Str()),
    "timeout": F(Number(min=0.1), default=5),
    "interval": F(Number(min=0.05), default=1),
    "retries": F(Int(1), default=30),
})

DEPLOY = Struct({
    "source": F(Enum("git", "artifact", "image", "compose"), required=True),
    "repo": F(Str()),
    "ref": F(Str(), default="main"),
    "artifact": F(Str()),
    "build": F(List(Str()), default=[]),
    "strategy": F(Enum("blue_green", "restart"), default="blue_green"),
    "ports": F(List(Int(1, 65535))),
    "keep_releases": F(Int(1), default=5),
    "batch": F(Str(r"\d+%?", "a count such as 2 or a percent such as 25%")),
    "max_fail": F(Str(r"\d+%?", "a count such as 1 or a percent such as 10%"), default="0"),
    "rollback_fleet": F(Bool(), default=True),
    "lock_wait": F(Number(min=0), default=0),
    # a lock older than this (seconds) is reported as stale (tasks/release/lock.py); `fab unlock` breaks it
    "lock_max_age": F(Number(min=1), default=7200),
    "image": F(Str()),
    "tag": F(Str()),
}, fill_default=False)

HTTP_CHECK = Struct({
    "name": F(Str()),
    "method": F(Enum("GET", "HEAD", "POST", "PUT", "DELETE"), default="GET"),
    "path": F(Str(r"/.*", "a URL path starting with /"), required=True),
    "headers": F(Map(Str(non_empty=False)), default={}),
    "body": F(Str(non_empty=False)),
    "expect_status": F(Int(100, 599), default=200),
    "body_contains": F(Str()),
    "via": F(Enum("app", "nginx", "https"), default="app"),
    # checks sharing a session name run in list order with one cookie jar (tasks/verify/checks.py);
    # body and header values may say ${KEY}: read from the app's env file on the host
    "session": F(Str(NAME, "a session name (letters, digits, '.', '_' or '-')")),
})

# Which tasks end with the verification gate (tasks/verify/gate.py run_gate); all by default.
GATE = Struct({
    "bootstrap": F(Bool(), default=True),
    "deploy": F(Bool(), default=True),
    "rotate-env": F(Bool(), default=True),
    "rollback": F(Bool(), default=True),
})

VERIFY = Struct({
    "gate": F(GATE),
    "checks": F(List(HTTP_CHECK), default=[]),
    # check names (or prefixes ending in '*') that fab verify and the gate leave out
    "skip": F(List(Str(r"[a-z_]+\*?|http:.+", "a check name such as cert_valid or http:*")), default=[]),
    # units that may be failed without failing the failed_units check
    "ignore_failed_units": F(List(Str()), default=[]),
    "cert_min_days": F(Int(0), default=14),
    "cert_issuer": F(Str()),
    # local PEM the served chain must verify against (default: the host's CA store)
    "cert_ca_file": F(Str()),
    "swap_tolerance": F(Number(min=0), default=0.05),
})

# tasks/release/alb.py: take a host out of an ALB target group around its deploy.
ALB = Struct({
    "target_group_arn": F(Str(r"arn:aws[a-z\-]*:elasticloadbalancing:[a-z0-9\-]+:\d+:targetgroup/.+",
                              "a target group ARN (arn:aws:elasticloadbalancing:REGION:ACCOUNT:targetgroup/NAME/ID)"),
                          required=True),
    "region": F(Str(r"[a-z]{2}(-[a-z]+)+-\d", "an AWS region such as eu-west-1")),  # default: from the ARN
    "profile": F(Str()),
    "endpoint_url": F(Str(r"https?://.+", "an http(s) URL")),
    "port": F(Int(1, 65535)),  # the target's port when it differs from the target group's
    "drain_timeout": F(Number(min=0), default=30),
    "register_timeout": F(Number(min=0), default=300),
    "poll_interval": F(Number(min=0.05), default=5),
    "min_in_service": F(Int(0), default=1),
}, fill_default=False)

# Release hooks (tasks/release/hooks.py): shell commands run as the app user in the release
# dir with the env file's variables; `once: true` runs one on a single host per deploy.
HOOK_COMMAND = Struct({
    "run": F(Str(r"[^\x00]+", "a shell command"), required=True),
    "once": F(Bool(), default=False),
    "timeout": F(Number(min=1), default=600),
    "name": F(Str(NAME, "a hook name (letters, digits, '.', '_' or '-')")),
})
HOOK_ITEM = OneOfShapes(lambda v: Str(r"[^\x00]+", "a shell command") if isinstance(v, str)
                        else HOOK_COMMAND if isinstance(v, dict) else None,
                        "a command, or a mapping with run/once/timeout/name")
HOOK_STAGES = ("before_build", "before_switch", "after_switch", "after_rollback")

HOOKS = Struct({"alb": F(ALB), **{s: F(List(HOOK_ITEM), default=[]) for s in HOOK_STAGES}},
               fill_default=False)

# Webhooks after deploy/rollback/rotate-env (tasks/release/notify.py). The URL is a secret
# (tokens live in it): masked everywhere, never printed.
class SecretURL(Str):
    """An http(s) URL that may hold a token: a bad one is refused without echoing it."""

    def __init__(self):
        super().__init__(r"https?://[^\s\x00-\x1f]+", "an http(s) URL")

    def check(self, value, path):
        if not isinstance(value, str) or not self.pattern.fullmatch(value):
            raise SchemaError(path, "expected an http(s) URL (value not shown: it may hold a token)")
        return value


def _one_url(hook: dict, path: tuple) -> None:
    if bool(hook.get("url")) == bool(hook.get("url_env")):
        raise SchemaError(path, "expected exactly one of url (the webhook URL) or url_env (the name of an "
                                "environment variable on the control machine holding it)")


NOTIFY_HOOK = Struct({
    "url": F(SecretURL()),
    "url_env": F(Str(ENV_KEY, "an environment variable name")),
    "format": F(Enum("json", "slack"), default="json"),
    "events": F(List(Enum("start", "success", "failure")), default=["start", "success", "failure"]),
    "tasks": F(List(Enum("deploy", "rollback", "rotate-env")), default=["deploy", "rollback", "rotate-env"]),
    "timeout": F(Number(min=0.1), default=5),
    "name": F(Str(NAME, "a webhook name (letters, digits, '.', '_' or '-')")),
}, validator=_one_url)
NOTIFY = List(NOTIFY_HOOK)

SANDBOX = Map(Any_())

from .provision_schema import PROVISION  # noqa: E402  (fab provision: its own subpackage)

INVENTORY = Struct({
    "include": F(List(Str(), single_ok=True), default=[]),
    "description": F(Str(non_empty=False)),
    "environment": F(Str(NAME, "an environment name such as dev or prod")),
    "hosts": F(HOSTS, required=True),
    "ssh": F(SSH),
    "groups": F(Map(GROUP, NAME, "letters, digits, '.', '_' or '-'"), default={}),
    "vars": F(Map(Any_()), default={}),
    "packages": F(List(Str(r"[A-Za-z0-9][A-Za-z0-9+.\-_:]*", "a package name")), default=[]),
    "swap": F(SWAP),
    "app": F(APP),
    "nginx": F(NGINX),
    "tls": F(TLS),
    "docker": F(DOCKER),
    "env": F(ENV),
    "deploy": F(DEPLOY),
    "health": F(HEALTH),
    "verify": F(VERIFY),
    "hooks": F(HOOKS),
    "notify": F(NOTIFY, default=[]),
    "provision": F(PROVISION),
    "sandbox": F(SANDBOX, default={}),
})


def check_env_mode(inv) -> None:
    """The env file holds the app's secrets: a mode wider than 0600 is refused
    before any host is touched (bootstrap, deploy, rollback, rotate-env), unless
    the inventory means it: group bits need `env.group_readable: true`; world
    bits are never accepted (verify's env_file_mode fails them too)."""
    mode = inv.get("env.mode") or "0600"
    bits = int(mode, 8)
    if bits & 0o007:
        raise inv.error("env.mode", f"{mode} lets every user on the host read or write the env file; "
                                    "use 0600 (or 0640 with env.group_readable: true)")
    if bits & 0o070 and inv.get("env.group_readable") is not True:
        from .app import app_identity

        group = inv.get("env.group") or app_identity(inv)[1]
        raise inv.error("env.mode", f"{mode} lets group {group} read the env file (its secrets); set "
                                    "env.group_readable: true if that is meant, or use 0600")
