"""Sandbox pure helpers: address planning, argument validation, inventory
generation, image identity, process helpers. No root, no hosts."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import yaml

from tasks.sandbox import fleet as sandbox
from tasks.sandbox import services as svc
from tasks.core.errors import FabshipError

KEY = Path("/repo/.fabship/sandbox/id_ed25519")
KNOWN = Path("/repo/.fabship/sandbox/known_hosts")
PEBBLE = {"acme_server": "https://10.231.0.1:14000/dir",
          "acme_ca_file": "/repo/.fabship/sandbox/pebble-api-ca.pem",
          "acme_issuer_root": "/repo/.fabship/sandbox/pebble-issuer-root.pem"}
ALL = {"pebble": PEBBLE, "moto": {"moto_endpoint": "http://10.231.0.1:5005"},
       "registry": {"registry": "10.231.0.1:5000"}}
HOSTS = [("h1", "10.231.0.11"), ("h2", "10.231.0.12")]


# -- planning -------------------------------------------------------------------

def test_plan_addresses_names_and_interfaces():
    plan = sandbox.plan_fleet(3)
    assert plan.bridge_ip == "10.231.0.1" and plan.prefixlen == 24
    assert [(h.name, h.address, h.netns, h.veth) for h in plan.hosts] == [
        ("h1", "10.231.0.11", "fabship-h1", "fabship0-h1"),
        ("h2", "10.231.0.12", "fabship-h2", "fabship0-h2"),
        ("h3", "10.231.0.13", "fabship-h3", "fabship0-h3"),
    ]


def test_plan_other_subnet_and_limits():
    plan = sandbox.plan_fleet(2, subnet="10.232.5.0/24", bridge="fsb1")
    assert plan.bridge_ip == "10.232.5.1"
    assert [h.address for h in plan.hosts] == ["10.232.5.11", "10.232.5.12"]
    top = sandbox.plan_fleet(sandbox.max_hosts())
    assert top.hosts[-1].address == "10.231.0.254"  # never the broadcast address
    assert all(len(h.veth) <= 15 for h in top.hosts)  # IFNAMSIZ
    with pytest.raises(FabshipError, match="do not fit"):
        sandbox.plan_fleet(10, subnet="10.232.5.0/28")
    with pytest.raises(FabshipError, match="bad sandbox subnet"):
        sandbox.plan_fleet(1, subnet="10.232.5.1/24")
    with pytest.raises(FabshipError, match="too long"):
        sandbox.plan_fleet(1, bridge="a-very-long-bridge")


@pytest.mark.parametrize("value", [0, -1, "abc", "", None, 2.5, sandbox.max_hosts() + 1])
def test_count_rejected(value):
    with pytest.raises(FabshipError, match="--count"):
        sandbox.validate_count(value)


@pytest.mark.parametrize("value,expected", [(1, 1), ("5", 5), (" 12 ", 12), (3, 3)])
def test_count_accepted(value, expected):
    assert sandbox.validate_count(value) == expected


def test_services_defaults_and_flags():
    assert sandbox.resolve_services(False) == ["acng", "challtestsrv", "pebble", "moto"]
    assert sandbox.resolve_services(True) == ["acng", "challtestsrv", "pebble", "moto", "registry"]
    assert sandbox.resolve_services(True, registry=False)[-1] == "moto"
    assert sandbox.resolve_services(False, registry=True)[-1] == "registry"
    assert sandbox.resolve_services(False, moto=False, pebble=False) == ["acng"]


def test_registry_flags():
    assert sandbox.registry_choice(None, False) is None
    assert sandbox.registry_choice(True, False) is True
    assert sandbox.registry_choice(None, True) is False
    with pytest.raises(FabshipError, match="contradict"):
        sandbox.registry_choice(True, True)


def test_cli_flags_reach_sandbox_up(monkeypatch):
    from invoke import Collection, Program

    calls = []
    monkeypatch.setattr(sandbox, "sandbox_up", lambda *a, **k: calls.append((a, k)))
    ns = Collection()
    from tasks.sandbox import tasks as sandbox_tasks

    ns.add_collection(sandbox_tasks.ns)
    prog = Program(namespace=ns)
    prog.run(["fab", "sandbox.up"], exit=False)
    prog.run(["fab", "sandbox.up", "--count", "5", "--docker", "--no-registry", "--no-moto"],
             exit=False)
    prog.run(["fab", "sandbox.up", "--registry", "--no-pebble"], exit=False)
    assert calls[0] == ((3,), {"docker": False, "moto": True, "pebble": True, "registry": None})
    assert calls[1] == ((5,), {"docker": True, "moto": False, "pebble": True, "registry": False})
    assert calls[2] == ((3,), {"docker": False, "moto": True, "pebble": False, "registry": True})


def test_needs_root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    for fn in (lambda: sandbox.sandbox_up(1), sandbox.sandbox_down):
        with pytest.raises(FabshipError, match="needs root"):
            fn()


def test_subnet_conflicts():
    addrs = [
        {"ifname": "lo", "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8}]},
        {"ifname": "fabship0", "addr_info": [{"family": "inet", "local": "10.231.0.1",
                                              "prefixlen": 24}]},
        {"ifname": "eth1", "addr_info": [{"family": "inet6", "local": "fd00::1", "prefixlen": 64},
                                         {"family": "inet", "local": "10.231.0.200",
                                          "prefixlen": 16}]},
    ]
    assert sandbox.subnet_conflicts(addrs, "10.231.0.0/24", "fabship0") == ["10.231.0.200/16 on eth1"]
    assert sandbox.subnet_conflicts(addrs[:2], "10.231.0.0/24", "fabship0") == []


# -- image identity ---------------------------------------------------------------

def test_image_id_changes_with_package_list():
    a = sandbox.image_stamp()
    assert sandbox.image_id(a) == sandbox.image_id(sandbox.image_stamp())
    assert sandbox.image_id(a).startswith("bookworm-")
    b = sandbox.image_stamp(sandbox.BASE_PACKAGES + ("procps",))
    assert sandbox.image_id(a) != sandbox.image_id(b)
    assert set(sandbox.BASE_PACKAGES) >= {"systemd", "systemd-sysv", "dbus", "openssh-server",
                                          "python3", "sudo", "iproute2", "ca-certificates", "curl"}


# -- generated files ------------------------------------------------------------------

def test_inventory_all_standins():
    files = sandbox.render_inventories(HOSTS, KEY, KNOWN, "10.231.0.1", True, ALL)
    text = files["sandbox.yaml"]
    assert text.splitlines()[0] == ("# generated by `fab sandbox.up` -- do not edit; "
                                    "removed by `fab sandbox.down`")
    assert "    h1: {address: 10.231.0.11, tags: {Name: fabship-sandbox-h1, " \
           "Project: fabship-sandbox}}\n" in text
    inv = yaml.safe_load(text)
    assert inv == {
        "hosts": {"static": {
            "h1": {"address": "10.231.0.11",
                   "tags": {"Name": "fabship-sandbox-h1", "Project": "fabship-sandbox"}},
            "h2": {"address": "10.231.0.12",
                   "tags": {"Name": "fabship-sandbox-h2", "Project": "fabship-sandbox"}}}},
        "ssh": {"user": "root", "key_file": str(KEY), "known_hosts": str(KNOWN), "port": 22,
                "connect_timeout": 5},
        "sandbox": {"bridge_ip": "10.231.0.1", "docker": True, "domain_suffix": "sandbox.test",
                    **PEBBLE, "registry": "10.231.0.1:5000",
                    "moto_endpoint": "http://10.231.0.1:5005"},
        "tls": {"acme_server": PEBBLE["acme_server"], "acme_ca_file": PEBBLE["acme_ca_file"]},
        "docker": {"registry": "10.231.0.1:5000"},
    }
    ec2 = yaml.safe_load(files["sandbox-ec2.yaml"])
    assert ec2 == {"hosts": {"ec2": {"region": "us-east-1", "endpoint_url": "http://10.231.0.1:5005",
                                     "filters": {"tag:Project": "fabship-sandbox"},
                                     "address": "private_ip", "max_hosts": 10}},
                   "ssh": inv["ssh"]}


def test_inventory_without_standins():
    files = sandbox.render_inventories(HOSTS, KEY, KNOWN, "10.231.0.1", False, {})
    assert set(files) == {"sandbox.yaml"}  # no moto: no EC2 inventory
    inv = yaml.safe_load(files["sandbox.yaml"])
    assert set(inv) == {"hosts", "ssh", "sandbox"}
    assert inv["sandbox"] == {"bridge_ip": "10.231.0.1", "docker": False,
                              "domain_suffix": "sandbox.test"}


def test_inventory_quotes_awkward_paths():
    key = Path("/tmp/my repo: #1/id_ed25519")
    files = sandbox.render_inventories(HOSTS, key, KNOWN, "10.231.0.1", False, {})
    assert yaml.safe_load(files["sandbox.yaml"])["ssh"]["key_file"] == str(key)


def test_max_hosts_in_ec2_inventory_follows_count():
    hosts = [(f"h{i}", f"10.231.0.{10 + i}") for i in range(1, 13)]
    files = sandbox.render_inventories(hosts, KEY, KNOWN, "10.231.0.1", False, ALL)
    assert yaml.safe_load(files["sandbox-ec2.yaml"])["hosts"]["ec2"]["max_hosts"] == 12


def test_known_hosts_lines():
    text = sandbox.known_hosts_lines([
        ("10.231.0.11", "ssh-ed25519 AAAAC3Nza1 root@h1\n"),
        ("10.231.0.12", "ssh-ed25519 AAAAC3Nza2 root@h2"),
    ])
    assert text == "10.231.0.11 ssh-ed25519 AAAAC3Nza1\n10.231.0.12 ssh-ed25519 AAAAC3Nza2\n"


def test_service_configs_render():
    conf = svc.render("sandbox/acng.conf.j2", cache_dir="/c", log_dir="/l", conf_dir="/x",
                      bridge_ip="10.231.0.1", port=3142, pidfile="/r/acng.pid",
                      debian_mirror=svc.DEBIAN_MIRROR, security_mirror=svc.DEBIAN_SECURITY_MIRROR)
    assert "BindAddress: 10.231.0.1" in conf and "ForeGround: 1" in conf
    import json

    pebble = json.loads(svc.render("sandbox/pebble-config.json.j2", bridge_ip="10.231.0.1",
                                   port=14000, mgmt_port=15000, cert="/a b/c.pem", key="/k"))
    assert pebble["pebble"]["httpPort"] == 80 and pebble["pebble"]["tlsPort"] == 443
    assert pebble["pebble"]["listenAddress"] == "10.231.0.1:14000"
    assert pebble["pebble"]["certificate"] == "/a b/c.pem"
    reg = yaml.safe_load(svc.render("sandbox/registry-config.yml.j2", bridge_ip="10.231.0.1",
                                    port=5000, storage="/var/cache/fabship/registry"))
    assert reg["http"]["addr"] == "10.231.0.1:5000"


def test_yaml_scalar():
    for value in ["plain", "/abs/path", "10.231.0.1:5000", "yes", "1.5", "a: b", "#x", ""]:
        assert yaml.safe_load(f"k: {svc.yaml_scalar(value)}")["k"] == value
    assert svc.yaml_scalar(True) == "true" and svc.yaml_scalar(5) == "5"


# -- process helpers -------------------------------------------------------------------

def test_spawn_detached_and_stop(tmp_path):
    log = tmp_path / "sleep.log"
    proc = svc.spawn_detached(["sh", "-c", "echo started; exec sleep 30"], log)
    try:
        assert proc.alive()
        deadline = time.monotonic() + 5
        while "started" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "started" in log.read_text()
        assert os.getsid(proc.pid) == proc.pid  # own session
        # re-parented away from us: never our zombie
        assert int(open(f"/proc/{proc.pid}/stat").read().rsplit(")", 1)[1].split()[1]) != os.getpid()
    finally:
        assert svc.stop_proc(proc, timeout=5) is True
    assert not proc.alive()


def test_recycled_pid_is_not_ours():
    me = svc.Proc(os.getpid(), svc.proc_start_time(os.getpid()))
    assert me.alive()
    assert not svc.Proc(me.pid, me.start + 1).alive()


def test_wait_for_reports_log_tail(tmp_path):
    log = tmp_path / "svc.log"
    log.write_text("line1\nboom: cannot bind\n")
    with pytest.raises(FabshipError, match="(?s)did not come up.*boom: cannot bind"):
        svc.wait_for("thing", lambda: False, 0.2, log_path=log)


def test_image_package_lists_refreshed_only_when_old(tmp_path, monkeypatch):
    import subprocess as sp

    image = tmp_path / "images" / "bookworm-x"
    lists = image / "var/lib/apt/lists"
    lists.mkdir(parents=True)
    calls = []
    monkeypatch.setattr(sandbox.subprocess, "run",
                        lambda argv, **kw: calls.append(argv) or sp.CompletedProcess(argv, 0, "", ""))
    said = []
    sandbox.refresh_package_lists(image, "http://10.231.0.1:3142", said.append)  # none yet: refresh
    assert calls and calls[0][:4] == ["chroot", str(image), "apt-get", "update"]
    assert "Acquire::http::Proxy=http://10.231.0.1:3142" in calls[0]
    assert said == ["package lists refreshed in the base image"]
    fresh = lists / "deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages"
    fresh.write_text("")
    calls.clear()
    sandbox.refresh_package_lists(image, "http://10.231.0.1:3142", said.append)  # fresh: nothing
    assert calls == []
    old = time.time() - sandbox.LISTS_MAX_AGE - 60
    os.utime(fresh, (old, old))
    sandbox.refresh_package_lists(image, "http://10.231.0.1:3142", said.append)
    assert len(calls) == 1


@pytest.mark.parametrize("count, instances, watches, changed", [
    (8, "128", "192530", ["fs.inotify.max_user_instances 128 -> 640"]),
    (100, "128", "192530", ["fs.inotify.max_user_instances 128 -> 6528",
                            "fs.inotify.max_user_watches 192530 -> 819328"]),
    (100, "8192", "1048576", []),          # never lowered
])
def test_inotify_limits_are_raised_for_the_fleet_size(tmp_path, count, instances, watches, changed):
    from tasks.sandbox.fleet import raise_inotify_limits

    d = tmp_path / "fs" / "inotify"
    d.mkdir(parents=True)
    (d / "max_user_instances").write_text(instances + "\n")
    (d / "max_user_watches").write_text(watches + "\n")
    assert raise_inotify_limits(count, proc_sys=tmp_path) == changed
    assert int((d / "max_user_instances").read_text()) >= max(int(instances), 128 + 64 * count)
    assert int((d / "max_user_watches").read_text()) >= max(int(watches), 128 + 8192 * count)
