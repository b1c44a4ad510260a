"""fab provision on the sandbox: a provision inventory whose instance maps to a
sandbox host (moto's instance gets h8's private address, in a VPC/subnet made for
this run), then bootstrap -> deploy -> verify of the OTA guide's app, as one
documented command sequence; a second provision changes nothing; --destroy
leaves no managed resource.

Host keys: moto's console output has no host keys, so the test writes what
cloud-init would print -- h8's real /etc/ssh/ssh_host_*_key.pub -- through the
FABSHIP_STANDIN_CONSOLE_DIR seam (tasks/provision/hostkeys.py). A console that
shows other keys is refused first, and nothing reaches known_hosts."""
from __future__ import annotations

import json
import secrets
import textwrap

import boto3

from fab_cli import run_fab
from test_e2e_support import HOST, INV, h8  # noqa: F401

REGION = "eu-west-1"      # the sandbox's own EC2 instances live in us-east-1
NAME = "fabship-it-dev-ota"


def aws(url, service):
    return boto3.client(service, region_name=REGION, endpoint_url=url,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def managed(url) -> list:
    ec2 = aws(url, "ec2")
    f = [{"Name": "tag:ManagedBy", "Values": ["fabship"]}, {"Name": "tag:fabship:project", "Values": ["fabship-it"]}]
    out = [i["InstanceId"] for r in ec2.describe_instances(Filters=f + [
        {"Name": "instance-state-name", "Values": ["pending", "running", "stopped"]}])["Reservations"]
        for i in r["Instances"]]
    out += [g["GroupId"] for g in ec2.describe_security_groups(Filters=f)["SecurityGroups"]]
    out += [a["AllocationId"] for a in ec2.describe_addresses(Filters=f)["Addresses"]]
    out += [k["KeyName"] for k in ec2.describe_key_pairs(Filters=f)["KeyPairs"]]
    out += [r["RoleName"] for r in aws(url, "iam").list_roles()["Roles"] if r["RoleName"].startswith(NAME)]
    out += [b["Name"] for b in aws(url, "s3").list_buckets()["Buckets"] if b["Name"].startswith(NAME)]
    return out


def test_provision_then_bootstrap_deploy_verify(h8, tmp_path):  # noqa: F811
    fleet = h8
    url = fleet.services["moto"]["moto_endpoint"]
    address = fleet.host(HOST).address
    run = secrets.token_hex(3)
    # the account's existing network: a VPC and subnet holding h8's address, found by Name tag
    ec2 = aws(url, "ec2")
    vpc = ec2.create_vpc(CidrBlock=f"{address.rsplit('.', 2)[0]}.0.0/16")["Vpc"]["VpcId"]
    ec2.create_subnet(VpcId=vpc, CidrBlock=f"{address.rsplit('.', 1)[0]}.0/24", TagSpecifications=[
        {"ResourceType": "subnet", "Tags": [{"Key": "Name", "Value": f"fabship-it-{run}"}]}])
    r53 = aws(url, "route53")
    if not [z for z in r53.list_hosted_zones()["HostedZones"] if z["Name"] == "sandbox.test."]:
        r53.create_hosted_zone(Name="sandbox.test", CallerReference=f"fabship-it-{run}")
    known_hosts = tmp_path / "known_hosts"
    inv = tmp_path / "ota-provision.yaml"
    inv.write_text(textwrap.dedent(f"""\
        include: [{INV / 'sandbox-ota.yaml'}]
        environment: dev
        hosts:
          ec2:
            region: {REGION}
            endpoint_url: {url}
            filters: {{"tag:Name": {NAME}}}
            address: private_ip
            max_hosts: 1
        ssh: {{known_hosts: {known_hosts}}}
        nginx: {{server_name: {HOST}.sandbox.test}}
        tls: {{domains: [{HOST}.sandbox.test]}}
        provision:
          project: fabship-it
          resource: ota
          subnet: {{name: fabship-it-{run}}}
          bucket: {{}}
          role: {{}}
          security_group: {{ssh_cidrs: [{fleet.bridge_ip}/32]}}
          key_pair: {{public_key_file: {fleet.key_file}.pub}}
          instance: {{type: t3.small, private_ip: {address}, wait_timeout: 120}}
          dns: {{zone: {{name: sandbox.test}}, record: {HOST}-provisioned.sandbox.test}}
        """))
    console = tmp_path / "console"
    console.mkdir()
    env = {"FABSHIP_STANDIN_CONSOLE_DIR": str(console), "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing"}
    runs = tmp_path / "runs"

    def fab(*args, expect=0, timeout=900):
        r = run_fab(*args, "-i", str(inv), runs_dir=runs, env=env, timeout=timeout)
        assert expect is None or r.returncode == expect, f"fab {' '.join(args)}: exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-2000:]}"
        assert "Traceback" not in r.stdout + r.stderr
        return r

    from tasks.provision.hostkeys import console_block

    try:
        code, out, err = fleet.run(HOST, "cat /etc/ssh/ssh_host_*_key.pub")
        assert code == 0, err
        host_keys = [tuple(line.split()[:2]) for line in out.splitlines() if line.strip()]
        # a console that vouches for other keys: refused, nothing trusted
        (console / f"{address}.txt").write_text(console_block(
            [("ssh-ed25519", "AAAAC3NzaC1lZDI1NTE5AAAAIDs0l9zk1PZL3fY2V5kC2pq2x3z4sX8n2o0wq5P4bBbT")]))
        r = fab("provision", expect=4)  # a refused host key exits 4 (README "Exit codes")
        assert "refusing to trust it" in r.stderr and not known_hosts.exists()
        # what cloud-init prints on the instance's console: the host's own keys
        (console / f"{address}.txt").write_text("[  9.1] cloud-init[812]: modules:final\n" + console_block(host_keys))
        r = fab("provision", "--then-bootstrap", timeout=1200)
        assert "matches the console output" in r.stdout
        recorded = known_hosts.read_text().split()
        assert recorded[0] == address and tuple(recorded[1:3]) in host_keys
        # then it is a host: deploy and verify through the normal EC2 discovery
        fab("deploy", timeout=1200)
        v = fab("verify")
        rec = json.loads(sorted(runs.glob("*-verify-*.json"))[-1].read_text())
        assert list(rec["hosts"]) == [NAME], rec["hosts"]
        checks = {c["name"]: c["status"] for c in rec["extra"]["verify"][NAME]}
        assert checks and set(checks.values()) == {"passed"}, v.stdout
        assert "http:login" in checks and "cert_valid" in checks
        code, out, _ = fleet.run(HOST, "systemctl is-active xavia-ota.service; curl -s localhost:3000/api/health")
        assert out.startswith("active"), out
        again = fab("provision")
        assert "created " not in again.stdout and "changed " not in again.stdout, again.stdout
    finally:
        fab("provision", "--destroy", "--yes", "--delete-bucket", expect=None)
    assert managed(url) == []
