"""pytest plugin for fabship's verification suite: the checks of
tasks/verify/checks.py as parametrized testinfra tests, one test per (host, check).

    # over fabship's own SSH layer (strict host keys, the inventory's key/user/sudo):
    pytest tasks/verify/suite --fabship-inventory=prod [--fabship-limit=web1] [--fabship-stage=deploy]
    # the same from an installed fabship, anywhere:
    pytest -p tasks.verify.suite.plugin --pyargs tasks.verify.suite --fabship-inventory=prod

    # over testinfra's own backends; hosts are matched to the inventory by name or address:
    fab verify -i prod --write-ssh-config=prod.ssh_config
    pytest tasks/verify/suite --fabship-inventory=prod --hosts=ssh://web1 --ssh-config=prod.ssh_config
    pytest tasks/verify/suite --fabship-inventory=prod --hosts=paramiko://root@10.0.0.5 \
        --ssh-identity-file=~/.ssh/id_ed25519

`paramiko://` is made strict here (the inventory's known_hosts, unknown keys
refused): testinfra's own paramiko backend would accept any host key.
Test ids are HOST-CHECK, so `-k env_file_mode` or `-k web1` select.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import pytest

from .. import checks as C
from .. import spec as CS

_REGISTERED = False


def registered() -> bool:
    """True once pytest loaded this plugin (-p): conftest.py then adds nothing."""
    return _REGISTERED


def pytest_addoption(parser):
    global _REGISTERED
    _REGISTERED = True
    g = parser.getgroup("fabship", "fabship verification suite")
    g.addoption("--fabship-inventory", default=os.environ.get("FABSHIP_INVENTORY"),
                help="inventory NAME or PATH whose promises are checked (default: $FABSHIP_INVENTORY)")
    g.addoption("--fabship-limit", default=None, help="only these hosts or groups (comma-separated)")
    g.addoption("--fabship-stage", default=None, choices=list(CS.STAGES),
                help="only the checks of one gate stage (default: every check)")
    g.addoption("--fabship-set", action="append", default=[],
                help="override an inventory key, e.g. --fabship-set verify.cert_min_days=7 (repeatable)")
    g.addoption("--fabship-accept-new-host-keys", action="store_true", default=False,
                help="trust on first use: record unknown host keys in the inventory's known_hosts")


@dataclass
class Target:
    """One host under test: its testinfra Host and its inventory entry."""

    name: str
    host: object            # testinfra.host.Host
    inv_host: object        # tasks.config.inventory.Host
    inv: object
    stage: str | None
    spec: CS.Spec = None
    _results: dict = field(default_factory=dict)

    def __repr__(self):
        return self.name

    def result(self, check_name: str) -> C.CheckResult:
        if not self._results:
            from ..gate import gather, plan

            self.spec, selected = plan(self.inv, self.inv_host, self.stage)
            facts = gather(self.host, self.spec)
            for r in C.evaluate(selected, C.Probe(self.spec, facts, self.stage)):
                self._results[r.name] = r
        return self._results[check_name]


def _targets(config) -> list[Target]:
    cached = getattr(config, "_fabship_targets", None)
    if cached is not None:
        return cached
    from ...config.inventory import load_inventory
    from ...core.errors import FabshipError

    o = config.option
    if not o.fabship_inventory:
        raise pytest.UsageError("fabship suite: pass --fabship-inventory=NAME_OR_PATH (or set FABSHIP_INVENTORY)")
    try:
        inv = load_inventory(o.fabship_inventory, overrides=o.fabship_set)
        hosts = inv.resolve_hosts(o.fabship_limit)
        if getattr(o, "hosts", None):
            targets = _testinfra_targets(config, inv, hosts)
        else:
            targets = _fabship_targets(config, inv, hosts)
    except FabshipError as e:
        raise pytest.UsageError(f"fabship: {e}") from None
    config._fabship_targets = targets
    return targets


def _fabship_targets(config, inv, hosts) -> list[Target]:
    """testinfra Hosts on fabship's own connections (one per host, opened lazily)."""
    from ...core.runner import Run
    from ..gate import testinfra_host

    run = Run("verify-pytest", inv, hosts, accept_new_host_keys=config.option.fabship_accept_new_host_keys)
    config._fabship_run = run
    return [Target(h.name, testinfra_host(run.ctx(h)), h, inv, config.option.fabship_stage) for h in hosts]


def _testinfra_targets(config, inv, hosts) -> list[Target]:
    """testinfra's own backends from --hosts, matched to inventory hosts."""
    import testinfra
    import testinfra.backend
    import testinfra.host

    from ...core.ssh import known_hosts_path
    from ..gate import strict_paramiko_backend

    o = config.option
    out = []
    for spec in o.hosts.split(","):
        name, kw = testinfra.backend.parse_hostspec(spec)
        conn = kw.get("connection") or o.connection or "paramiko"
        if conn == "paramiko":
            kw.pop("connection", None)
            kw.setdefault("ssh_identity_file", o.ssh_identity_file)
            backend = strict_paramiko_backend(name, str(known_hosts_path(inv)),
                                              **{k: v for k, v in kw.items() if v is not None})
            host = testinfra.host.Host(backend)
            backend.set_host(host)
        else:
            host = testinfra.get_host(spec, connection=conn, ssh_config=o.ssh_config,
                                      ssh_identity_file=o.ssh_identity_file, sudo=o.sudo, sudo_user=o.sudo_user)
        hostname = host.backend.get_hostname()
        bare = hostname.split("@")[-1]
        match = [h for h in hosts if bare in (h.name, h.address)]
        if not match:
            raise pytest.UsageError(f"fabship: --hosts entry {spec!r} ({bare}) is not a host of inventory "
                                    f"{inv.path} (hosts: {', '.join(h.name for h in hosts)})")
        out.append(Target(match[0].name, host, match[0], inv, o.fabship_stage))
    return out


def pytest_generate_tests(metafunc):
    if "fabship_target" not in metafunc.fixturenames:
        return
    from ..gate import plan

    params, ids = [], []
    for t in _targets(metafunc.config):
        _, selected = plan(t.inv, t.inv_host, t.stage)
        for c in selected:
            params.append((t, c.name))
            ids.append(f"{t.name}-{c.name}")
    metafunc.parametrize(["fabship_target", "fabship_check"], params, ids=ids)


def pytest_unconfigure(config):
    run = getattr(config, "_fabship_run", None)
    if run is not None:
        run.close()
