"""The sandbox fleet itself: real hosts reachable with strict host key checking,
systemd `running`, packages through the proxy, Docker in a host, and the cloud
stand-ins (moto EC2 by tag, Pebble ACME + DNS, registry).

Tests that change a host use the last one (hN) and leave it quiet again, so the
other modules' hosts (h1, ...) stay as `up` made them.
"""
from __future__ import annotations

import ipaddress
import os
import random
import socket
import ssl
import struct
import time
import urllib.request

import paramiko
import pytest
import yaml

from tasks.sandbox import fleet as sandbox
from tasks.core.errors import FabshipError


# Wait for the dpkg lock instead of failing: another session may be installing
# something on the same host at the same moment.
APT = "DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 -q"


def wait_running(fleet, name: str, timeout: float = 20.0) -> str:
    """`systemctl is-system-running`, polled: right after boot it may say `starting`."""
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        _, out, _ = fleet.run(name, "systemctl is-system-running")
        state = out.strip()
        if state != "starting" and state != "initializing":
            return state
        time.sleep(0.5)
    return state


def must(fleet, name: str, cmd: str, timeout: float = 600) -> str:
    rc, out, err = fleet.run(name, cmd, timeout=timeout)
    assert rc == 0, f"{name}: `{cmd}` exited {rc}\n{out}\n{err}"
    return out


def test_ssh_strict_and_systemd_running(sandbox_fleet):
    fleet = sandbox_fleet
    for h in fleet.hosts:
        client = paramiko.SSHClient()
        client.load_host_keys(str(fleet.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(h.address, username="root", key_filename=str(fleet.key_file),
                       look_for_keys=False, allow_agent=False, timeout=5)
        try:
            _, stdout, _ = client.exec_command("hostname; ip -4 -o addr show dev eth0")
            hostname, addr_line = stdout.read().decode().splitlines()[:2]
        finally:
            client.close()
        assert hostname == h.name
        assert f"{h.address}/" in addr_line
        state = wait_running(fleet, h.name)
        assert state == "running", f"{h.name}: {state}\n{fleet.run(h.name, 'systemctl --failed')[1]}"


def test_hosts_have_distinct_host_keys(sandbox_fleet):
    lines = sandbox_fleet.known_hosts.read_text().split("\n")
    entries = [line.split() for line in lines if line.strip()]
    assert {e[0] for e in entries} == {h.address for h in sandbox_fleet.hosts}
    assert all(e[1] == "ssh-ed25519" for e in entries)
    assert len({e[2] for e in entries}) == len(entries), "hosts share a host key"


def test_wrong_known_hosts_entry_is_refused(sandbox_fleet, tmp_path):
    fleet = sandbox_fleet
    if len(fleet.hosts) < 2:
        pytest.skip("needs two hosts")
    h1, h2 = fleet.hosts[0], fleet.hosts[1]
    keys = {line.split()[0]: line.split(None, 1)[1]
            for line in fleet.known_hosts.read_text().splitlines() if line.strip()}
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"{h1.address} {keys[h2.address]}\n")  # h2's key claimed for h1
    with pytest.raises(paramiko.BadHostKeyException):
        sandbox.ssh_connect(h1.address, fleet.key_file, wrong)
    unknown = tmp_path / "empty_known_hosts"
    unknown.write_text("")
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        sandbox.ssh_connect(h1.address, fleet.key_file, unknown)


def test_no_route_out(sandbox_fleet):
    name = sandbox_fleet.hosts[-1].name
    routes = must(sandbox_fleet, name, "ip -4 route")
    assert "default" not in routes


def test_apt_install_through_proxy(sandbox_fleet):
    name = sandbox_fleet.hosts[-1].name
    # as on a fresh cloud VM: the package lists are there, no `apt-get update` needed first
    out = must(sandbox_fleet, name, f"{APT} install -y jq >/dev/null && echo '{{\"a\": 42}}' | jq .a")
    assert out.strip() == "42"
    # and the indexes come through the proxy too
    must(sandbox_fleet, name, f"{APT} update >/dev/null && apt-cache policy jq | grep -q 'Candidate: [0-9]'")


def test_moto_finds_hosts_by_tag(sandbox_fleet):
    import boto3

    endpoint = sandbox_fleet.services["moto"]["moto_endpoint"]
    ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=endpoint,
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    resp = ec2.describe_instances(Filters=[
        {"Name": "tag:Project", "Values": ["fabship-sandbox"]},
        {"Name": "instance-state-name", "Values": ["running"]}])
    found = {}
    for r in resp["Reservations"]:
        for i in r["Instances"]:
            tags = {t["Key"]: t["Value"] for t in i["Tags"]}
            found[tags["Name"]] = i["PrivateIpAddress"]
    assert found == {f"fabship-sandbox-{h.name}": h.address for h in sandbox_fleet.hosts}


def test_generated_inventories(sandbox_fleet):
    fleet = sandbox_fleet
    text = fleet.inventory.read_text()
    assert text.startswith("# generated by `fab sandbox.up`")
    inv = yaml.safe_load(text)
    assert inv["hosts"]["static"] == {
        h.name: {"address": h.address,
                 "tags": {"Name": f"fabship-sandbox-{h.name}", "Project": "fabship-sandbox"}}
        for h in fleet.hosts}
    ssh = inv["ssh"]
    assert ssh == {"user": "root", "key_file": str(fleet.key_file),
                   "known_hosts": str(fleet.known_hosts), "port": 22, "connect_timeout": 5}
    assert os.path.isabs(ssh["key_file"]) and os.path.exists(ssh["key_file"])
    sb = inv["sandbox"]
    assert sb["bridge_ip"] == fleet.bridge_ip and sb["docker"] is True
    assert sb["domain_suffix"] == "sandbox.test"
    assert sb["acme_server"] == inv["tls"]["acme_server"] == f"https://{fleet.bridge_ip}:14000/dir"
    assert os.path.exists(sb["acme_ca_file"]) and os.path.exists(sb["acme_issuer_root"])
    assert sb["registry"] == inv["docker"]["registry"] == f"{fleet.bridge_ip}:5000"
    assert sb["moto_endpoint"] == f"http://{fleet.bridge_ip}:5005"
    ec2 = yaml.safe_load(fleet.ec2_inventory.read_text())
    assert ec2["hosts"]["ec2"]["filters"] == {"tag:Project": "fabship-sandbox"}
    assert ec2["hosts"]["ec2"]["endpoint_url"] == sb["moto_endpoint"]
    assert ec2["ssh"] == ssh


def _dns_a(server: str, port: int, name: str) -> list:
    """A records for name, asked over UDP (a minimal DNS client)."""
    qid = random.randrange(65536)
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"
    packet = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(packet, (server, port))
        data, _ = s.recvfrom(4096)
    ancount = struct.unpack(">H", data[6:8])[0]
    pos = 12 + len(qname) + 4
    answers = []
    for _ in range(ancount):
        pos += 2 if data[pos] & 0xC0 == 0xC0 else len(qname)  # name (pointer)
        rtype, _, _, rdlen = struct.unpack(">HHIH", data[pos:pos + 10])
        pos += 10
        if rtype == 1:
            answers.append(str(ipaddress.IPv4Address(data[pos:pos + rdlen])))
        pos += rdlen
    return answers


def test_pebble_and_its_dns(sandbox_fleet):
    fleet = sandbox_fleet
    pebble = fleet.services["pebble"]
    ctx = ssl.create_default_context(cafile=pebble["acme_ca_file"])
    with urllib.request.urlopen(pebble["acme_server"], context=ctx, timeout=5) as r:
        assert "newOrder" in r.read().decode()
    for h in fleet.hosts:
        assert _dns_a(fleet.bridge_ip, 8053, f"{h.name}.sandbox.test") == [h.address]
    assert "BEGIN CERTIFICATE" in open(pebble["acme_issuer_root"]).read()


def test_acme_certificate_from_pebble(sandbox_fleet):
    """certbot on a host gets a certificate for hN.sandbox.test (HTTP-01 on port
    80, name resolved by Pebble through challtestsrv) chaining to the saved root."""
    fleet = sandbox_fleet
    h = fleet.hosts[-1]
    pebble = fleet.services["pebble"]
    domain = f"{h.name}.sandbox.test"
    ca = open(pebble["acme_ca_file"]).read()
    must(fleet, h.name, f"cat > /root/pebble-api-ca.pem <<'EOF'\n{ca}EOF")
    must(fleet, h.name, f"{APT} update >/dev/null && {APT} install -y certbot >/dev/null")
    # certbot's standalone server needs port 80: an app another test left on this host has
    # nginx there, which is stopped for the request and started again
    was = fleet.run(h.name, "systemctl is-active -q nginx && systemctl stop nginx && echo stopped")[1]
    try:
        must(fleet, h.name, f"REQUESTS_CA_BUNDLE=/root/pebble-api-ca.pem certbot certonly "
                            f"--standalone --non-interactive --agree-tos -m ops@example.org "
                            f"--server {pebble['acme_server']} -d {domain} --cert-name sandbox-test")
    finally:
        if "stopped" in was:
            fleet.run(h.name, "systemctl start nginx")
    chain = must(fleet, h.name, "cat /etc/letsencrypt/live/sandbox-test/fullchain.pem")
    from cryptography import x509

    certs = x509.load_pem_x509_certificates(chain.encode())
    root = x509.load_pem_x509_certificate(open(pebble["acme_issuer_root"], "rb").read())
    assert certs[0].subject.rfc4514_string() == f"CN={domain}"
    assert certs[-1].issuer == root.subject
    certs[-1].verify_directly_issued_by(root)
    must(fleet, h.name, "certbot delete --non-interactive --cert-name sandbox-test >/dev/null")


def test_docker_runs_in_a_host(sandbox_fleet):
    fleet = sandbox_fleet
    if not fleet.docker:
        pytest.skip("fleet is not docker-capable")
    name = fleet.hosts[-1].name
    registry = fleet.services.get("registry", {}).get("registry")
    must(fleet, name, f"{APT} update >/dev/null && "
                      f"{APT} install -y docker.io busybox-static >/dev/null")
    try:
        info = must(fleet, name, "docker info --format '{{.Driver}}'")
        assert info.strip() == "overlay2"  # the plain /var/lib/docker bind, not vfs
        must(fleet, name, "rm -rf /root/bb && mkdir -p /root/bb/bin && "
                          "cp /bin/busybox /root/bb/bin/ && "
                          "tar -C /root/bb -c . | docker import - fabship-bb:test >/dev/null")
        out = must(fleet, name, "docker run --rm fabship-bb:test /bin/busybox echo hi-from-docker")
        assert out.strip() == "hi-from-docker"
        if registry:  # round trip through the local registry
            ref = f"{registry}/fabship/bb:test"
            must(fleet, name, f"docker tag fabship-bb:test {ref} && docker push -q {ref} && "
                              f"docker rmi -f {ref} fabship-bb:test >/dev/null && "
                              f"docker pull -q {ref} >/dev/null")
            out = must(fleet, name, f"docker run --rm {ref} /bin/busybox echo pulled")
            assert out.strip() == "pulled"
        assert wait_running(fleet, name) == "running"
    finally:
        # Leave the host quiet for the other modules.
        fleet.run(name, "systemctl disable --now docker.socket docker.service containerd.service "
                        ">/dev/null 2>&1")


def test_status_and_idempotent_up(sandbox_fleet):
    st = sandbox.sandbox_status()
    assert st["up"] is True
    assert [h["name"] for h in st["hosts"]] == [h.name for h in sandbox_fleet.hosts]
    assert all(h["alive"] and h["ssh_port"] and h["system"] == "running" for h in st["hosts"])
    assert all(s["alive"] and s["answering"] for s in st["services"]), st["services"]
    n = len(sandbox_fleet.hosts)
    again = sandbox.sandbox_up(n, docker=True, out=lambda m: None)
    assert again.created is False
    with pytest.raises(FabshipError, match="already up"):
        sandbox.sandbox_up(n + 1 if n < 10 else n - 1, docker=True, out=lambda m: None)
