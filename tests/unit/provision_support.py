"""A moto server of its own for the provision tests (a fresh account per module),
seeded like the account `fab provision` meets: a VPC, subnets found by Name tag,
a hosted zone, and unmanaged resources whose names collide with the managed ones."""
from __future__ import annotations

import json
import textwrap
import urllib.request
from pathlib import Path

import boto3

REGION = "eu-west-1"
# a real ed25519 public key (the private half is not kept anywhere)
PUB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEl5nV8yQm8x3bGQ6w5b7XQJ3mXq3O9Ww0Y7yJ0V0Mqs op@laptop"
HOST_KEY = ("ssh-ed25519", "AAAAC3NzaC1lZDI1NTE5AAAAIKb0l9zk1PZL3fY2V5kC2pq2x3z4sX8n2o0wq5P4bBbT")


def client(url: str, service: str):
    return boto3.client(service, region_name=REGION, endpoint_url=url,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def reset(url: str) -> None:
    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST"), timeout=10).read()


def seed(url: str) -> dict:
    """The pre-existing world: VPC + two public subnets (one named twice), a zone."""
    ec2 = client(url, "ec2")
    vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16", TagSpecifications=[
        {"ResourceType": "vpc", "Tags": [{"Key": "Name", "Value": "fitters-log-dev-vpc"}]}])["Vpc"]["VpcId"]
    subnets = {}
    for name, cidr in (("fitters-log-dev-public-a", "10.20.1.0/24"), ("fitters-log-dev-twice", "10.20.2.0/24"),
                       ("fitters-log-dev-twice", "10.20.3.0/24")):
        sn = ec2.create_subnet(VpcId=vpc, CidrBlock=cidr, TagSpecifications=[
            {"ResourceType": "subnet", "Tags": [{"Key": "Name", "Value": name}]}])["Subnet"]["SubnetId"]
        subnets.setdefault(name, []).append(sn)
    r53 = client(url, "route53")
    zone = r53.create_hosted_zone(Name="example.com", CallerReference="seed")["HostedZone"]["Id"].rsplit("/", 1)[-1]
    return {"vpc": vpc, "subnets": subnets, "zone": zone}


def write_inventory(tmp: Path, url: str, extra: str = "", provision: str | None = None, **kw) -> Path:
    (tmp / "id.pub").write_text(PUB + "\n")
    prov = provision if provision is not None else textwrap.dedent("""\
        provision:
          project: fitters-log
          resource: ota
          subnet: {name: fitters-log-dev-public-a}
          bucket: {}
          role: {}
          security_group: {ssh_cidrs: [203.0.113.7/32]}
          key_pair: {public_key_file: id.pub}
          instance: {type: t3.small, wait_timeout: 20}
          eip: {}
          dns: {zone: {name: example.com}, record: ota-dev.example.com}
        """)
    p = tmp / kw.get("name", "prov.yaml")
    p.write_text(textwrap.dedent(f"""\
        environment: dev
        hosts:
          ec2:
            region: {REGION}
            endpoint_url: {url}
            filters: {{"tag:Name": fitters-log-dev-ota}}
            address: public_ip
        ssh:
          user: ec2-user
          known_hosts: {tmp / 'known_hosts'}
        """) + prov + extra)
    return p


def snapshot(url: str) -> str:
    """Everything moto holds that provision could write, as comparable text."""
    ec2, iam, s3, r53 = (client(url, s) for s in ("ec2", "iam", "s3", "route53"))
    out = {
        "instances": sorted((i["InstanceId"], i["State"]["Name"], json.dumps(i.get("Tags"), sort_keys=True))
                            for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]),
        "groups": sorted(json.dumps(g, sort_keys=True, default=str) for g in ec2.describe_security_groups()["SecurityGroups"]),
        "keys": sorted(k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"]),
        "addresses": sorted(json.dumps(a, sort_keys=True) for a in ec2.describe_addresses()["Addresses"]),
        "roles": sorted(r["RoleName"] for r in iam.list_roles()["Roles"]),
        "profiles": sorted(p["InstanceProfileName"] for p in iam.list_instance_profiles()["InstanceProfiles"]),
        "buckets": sorted(b["Name"] for b in s3.list_buckets()["Buckets"]),
        "records": sorted(json.dumps(r, sort_keys=True) for z in r53.list_hosted_zones()["HostedZones"]
                          for r in r53.list_resource_record_sets(HostedZoneId=z["Id"])["ResourceRecordSets"]),
    }
    return json.dumps(out, indent=1, sort_keys=True)
