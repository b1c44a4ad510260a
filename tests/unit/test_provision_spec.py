"""fab provision, the pure parts: the inventory section's checks (one line naming
file and key), names and tags, plans from states, the console's host key block."""
from __future__ import annotations

import textwrap

import pytest

from tasks.core.errors import ConfigError
from tasks.config.inventory import load_inventory
from tasks.provision import hostkeys
from tasks.provision.resources import (
    DnsRecord, Later, ProvisionError, SecurityGroup, State, resolve, resources_for, s3_policy,
)
from tasks.provision.spec import build_spec

from . import provision_support as ps

BASE = """\
environment: dev
hosts:
  ec2:
    region: eu-west-1
    filters: {"tag:Name": fitters-log-dev-ota}
"""


def spec_of(tmp_path, provision: str, base: str = BASE):
    (tmp_path / "id.pub").write_text(ps.PUB + "\n")
    p = tmp_path / "inv.yaml"
    p.write_text(base + textwrap.dedent(provision))
    return build_spec(load_inventory(str(p)))


FULL = """\
provision:
  project: fitters-log
  resource: ota
  subnet: {name: fitters-log-dev-public-a}
  bucket: {}
  role: {}
  security_group: {ssh_cidrs: 203.0.113.7/32}
  key_pair: {public_key_file: id.pub}
  instance: {}
  eip: {}
  dns: {zone: {name: Example.com}, record: ota-dev.example.com}
"""


def test_names_follow_the_guides_convention(tmp_path):
    s = spec_of(tmp_path, FULL)
    assert s.base == "fitters-log-dev-ota"
    assert [r.name for r in resources_for(s)][1:] == [
        "fitters-log-dev-ota-bucket", "fitters-log-dev-ota-role", "fitters-log-dev-ota-profile",
        "fitters-log-dev-ota-sg", "fitters-log-dev-ota-key", "fitters-log-dev-ota", "fitters-log-dev-ota-eip",
        "ota-dev.example.com"]
    assert s.tags("x") == {"Name": "x", "ManagedBy": "fabship", "fabship:project": "fitters-log", "fabship:env": "dev"}
    assert s.managed(s.tags("x")) and not s.managed({**s.tags("x"), "fabship:env": "prod"})
    assert s.dns["zone"]["name"] == "example.com." and s.dns["record"] == "ota-dev.example.com."
    assert s.key_pair["public_key"][0] == "ssh-ed25519"


@pytest.mark.parametrize("provision, key, words", [
    ("provision: {project: Fitters, resource: ota}", "provision.project", "lowercase"),
    ("provision: {project: p, resource: ota, colour: red}", "provision.colour", "unknown key"),
    ("provision: {project: p, resource: ota, role: {}}", "provision.role", "needs provision.bucket"),
    ("provision: {project: p, resource: ota, instance: {}}", "provision.instance", "needs provision.subnet"),
    ("provision: {project: p, resource: ota, subnet: {id: subnet-1, name: a}}", "provision.subnet", "exactly one of"),
    ("provision: {project: p, resource: ota, security_group: {ssh_cidrs: [300.1.1.1/32]}, vpc: {id: vpc-1}}",
     "provision.security_group.ssh_cidrs[0]", "not a network"),
    ("provision: {project: p, resource: ota, key_pair: {public_key_file: nowhere.pub}}",
     "provision.key_pair.public_key_file", "cannot read"),
    ("provision: {project: fitters-log, resource: ota, subnet: {id: subnet-1}, instance: {}, "
     "dns: {zone: {name: example.org}, record: a.example.com}}", "provision.dns.record", "not inside the zone"),
    ("provision: {project: p, resource: ota, subnet: {id: subnet-1}, instance: {}}",
     "hosts.ec2.filters.tag:Name", "discovery would not find it"),
    ("provision: {project: p, resource: ota, tags: {ManagedBy: me}}", "provision.tags.ManagedBy", "set by fabship"),
])
def test_bad_input_names_file_and_key(tmp_path, provision, key, words):
    with pytest.raises(ConfigError) as e:
        spec_of(tmp_path, provision + "\n")
    assert e.value.key == key and words in str(e.value) and str(tmp_path / "inv.yaml") in str(e.value)


def test_private_key_given_as_public_key_is_refused_without_showing_it(tmp_path):
    (tmp_path / "id").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n")
    with pytest.raises(ConfigError) as e:
        spec_of(tmp_path, "provision: {project: p, resource: ota, key_pair: {public_key_file: id}}\n")
    assert "not an OpenSSH public key" in str(e.value) and "b3BlbnNz" not in str(e.value)


def test_security_group_plan_repairs_rules_exactly(tmp_path):
    s = spec_of(tmp_path, FULL)
    g = SecurityGroup(s)
    want = g.wanted_rules()
    state = State(exists=True, managed=True, id="sg-1", info={
        "tags": s.tags(g.name), "rules": (want - {("tcp", 22, 22, "cidr", "203.0.113.7/32")})
        | {("tcp", 22, 22, "cidr", "0.0.0.0/0")}})
    changes = g.plan(state, {"vpc_id": "vpc-1"})
    assert [c.api for c in changes] == ["ec2:AuthorizeSecurityGroupIngress", "ec2:RevokeSecurityGroupIngress"]
    assert changes[0].args["IpPermissions"] == [{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
                                                 "IpRanges": [{"CidrIp": "203.0.113.7/32"}]}]
    assert changes[1].args["IpPermissions"][0]["IpRanges"] == [{"CidrIp": "0.0.0.0/0"}]
    assert g.plan(State(exists=True, managed=True, id="sg-1", info={"tags": s.tags(g.name), "rules": want}),
                  {"vpc_id": "vpc-1"}) == []
    with pytest.raises(ProvisionError, match="not managed by fabship"):
        g.plan(State(exists=True, managed=False, id="sg-2", info={}), {"vpc_id": "vpc-1"})
    new = g.plan(State(), {"vpc_id": "vpc-1"})
    assert new[1].args["GroupId"] == Later("sg_id") and all(c.create for c in new)
    assert resolve(new[1].args, {"sg_id": "sg-9"})["GroupId"] == "sg-9"


def test_dns_record_owned_only_through_its_owner_record(tmp_path):
    s = spec_of(tmp_path, FULL)
    d = DnsRecord(s)
    a = {"Name": "ota-dev.example.com.", "Type": "A", "TTL": 300, "ResourceRecords": [{"Value": "192.0.2.1"}]}
    with pytest.raises(ProvisionError, match="dns record ota-dev.example.com"):
        d.plan(State(exists=True, managed=False, id="Z1", info={"a": a, "owner": None}), {"eip_ip": "192.0.2.1"})
    ours = State(exists=True, managed=True, id="Z1", info={"a": a, "owner": {}})
    assert d.plan(ours, {"eip_ip": "192.0.2.1"}) == []
    assert d.plan(ours, {"eip_ip": "192.0.2.7"})[0].args["ChangeBatch"]["Changes"][0]["Action"] == "UPSERT"
    assert d.destroy(State(exists=True, managed=False, id="Z1", info={"a": a, "owner": None}), {}) == []


def test_policy_is_least_privilege_on_the_bucket():
    p = s3_policy("b", ["s3:GetObject", "s3:ListBucket"], "cn-north-1")
    assert p["Statement"] == [
        {"Sid": "Objects", "Effect": "Allow", "Action": ["s3:GetObject"], "Resource": "arn:aws-cn:s3:::b/*"},
        {"Sid": "Bucket", "Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": "arn:aws-cn:s3:::b"}]


CLOUD_INIT = """\
[   21.0] cloud-init[1234]: Cloud-init v. 22.2.2 running 'modules:final'
ec2: #############################################################
ec2: -----BEGIN SSH HOST KEY FINGERPRINTS-----
ec2: 256 {ed} root@ip-10-0-1-5.eu-west-1.compute.internal (ED25519)
ec2: 256 SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA root@ip-10-0-1-5 (ECDSA)
ec2: -----END SSH HOST KEY FINGERPRINTS-----
ec2: #############################################################
-----BEGIN SSH HOST KEY KEYS-----
ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTY= root@ip-10-0-1-5
-----END SSH HOST KEY KEYS-----
"""


def test_console_block_parsed_and_matched_by_fingerprint():
    text = CLOUD_INIT.format(ed=hostkeys.sha256_fp(ps.HOST_KEY[1]))
    keys = hostkeys.parse_console(text)
    assert keys.fingerprints[0] == ("ED25519", hostkeys.sha256_fp(ps.HOST_KEY[1]))
    assert keys.keys == [("ecdsa-sha2-nistp256", "AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTY=")]
    assert hostkeys.matches(keys, *ps.HOST_KEY)
    assert not hostkeys.matches(keys, "ssh-ed25519", "AAAAC3NzaC1lZDI1NTE5AAAAIDs0l9zk1PZL3fY2V5kC2pq2x3z4sX8n2o0wq5P4bBbT")
    assert not hostkeys.parse_console("Linux version 2.6.16-xenU (builder@patchbat.amazonsa)\n")


def test_known_hosts_written_only_on_match(tmp_path):
    kh = tmp_path / "kh"
    keys = hostkeys.parse_console(hostkeys.console_block([ps.HOST_KEY]))
    other = ("ssh-ed25519", "AAAAC3NzaC1lZDI1NTE5AAAAIDs0l9zk1PZL3fY2V5kC2pq2x3z4sX8n2o0wq5P4bBbT")
    with pytest.raises(Exception, match="refusing to trust it"):
        hostkeys.record_if_matching(kh, "192.0.2.5", *other, keys, "i-1")
    assert not kh.exists()
    assert hostkeys.record_if_matching(kh, "192.0.2.5", *ps.HOST_KEY, keys, "i-1") == "recorded"
    assert hostkeys.record_if_matching(kh, "192.0.2.5", *ps.HOST_KEY, keys, "i-1") == "ok"
    assert kh.read_text() == f"192.0.2.5 {ps.HOST_KEY[0]} {ps.HOST_KEY[1]}\n"
    # another key already recorded for the address: refused, not appended
    keys2 = hostkeys.parse_console(hostkeys.console_block([other]))
    with pytest.raises(Exception, match="ssh-keygen -R"):
        hostkeys.record_if_matching(kh, "192.0.2.5", *other, keys2, "i-2")


def test_permission_denied_names_the_resource_and_the_action():
    from botocore.exceptions import ClientError

    from tasks.provision.flow import api_failure

    e = ClientError({"Error": {"Code": "UnauthorizedOperation", "Message": "You are not authorized to perform "
                               "this operation. Encoded authorization failure message: AbC123"}}, "RunInstances")
    line = api_failure("ec2 instance fitters-log-dev-ota", e, "ec2:RunInstances")
    assert line == ("ec2 instance fitters-log-dev-ota: permission denied for ec2:RunInstances (UnauthorizedOperation: "
                    "You are not authorized to perform this operation.); grant it to these credentials")
