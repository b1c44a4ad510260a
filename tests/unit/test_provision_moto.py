"""fab provision against moto's HTTP server (EC2, IAM, S3, Route53): the account
holds a VPC, subnets, a hosted zone and unmanaged resources with colliding names;
state is asserted in moto after each run."""
from __future__ import annotations

import pytest

from . import provision_support as ps
from tasks.provision import hostkeys


@pytest.fixture(scope="module")
def moto_url():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def world(moto_url, aws_env, tmp_path, monkeypatch):
    """A fresh account per test, the host key the instance would present, and its
    console output (the stand-in seam: moto prints no host keys)."""
    ps.reset(moto_url)
    seeded = ps.seed(moto_url)
    monkeypatch.setattr(hostkeys, "presented_key", lambda a, p, timeout=10: ps.HOST_KEY)
    console = tmp_path / "console"
    console.mkdir()
    (console / "10.20.1.10.txt").write_text("boot...\n" + hostkeys.console_block([ps.HOST_KEY]))
    env = {**aws_env, hostkeys.STANDIN_ENV: str(console)}
    return {"url": moto_url, "env": env, "tmp": tmp_path, "console": console, **seeded}


PRIVATE_IP = "    instance: {type: t3.small, wait_timeout: 20, private_ip: 10.20.1.10}\n"


def inventory(w, provision=None):
    text = provision
    if text is None:
        base = ps.write_inventory(w["tmp"], w["url"]).read_text()
        return _with_ip(w, base)
    return ps.write_inventory(w["tmp"], w["url"], provision=text)


def _with_ip(w, text):
    p = w["tmp"] / "prov.yaml"
    p.write_text(text.replace("  instance: {type: t3.small, wait_timeout: 20}\n",
                              "  instance: {type: t3.small, wait_timeout: 20, private_ip: 10.20.1.10}\n"))
    return p


def managed(url):
    """Every resource in moto that carries the fabship tags of fitters-log/dev."""
    ec2 = ps.client(url, "ec2")
    f = [{"Name": "tag:ManagedBy", "Values": ["fabship"]}, {"Name": "tag:fabship:env", "Values": ["dev"]},
         {"Name": "tag:fabship:project", "Values": ["fitters-log"]}]
    out = []
    for r in ec2.describe_instances(Filters=f + [{"Name": "instance-state-name", "Values": ["pending", "running"]}])["Reservations"]:
        out += [i["InstanceId"] for i in r["Instances"]]
    out += [g["GroupId"] for g in ec2.describe_security_groups(Filters=f)["SecurityGroups"]]
    out += [a["AllocationId"] for a in ec2.describe_addresses(Filters=f)["Addresses"]]
    out += [k["KeyName"] for k in ec2.describe_key_pairs(Filters=f)["KeyPairs"]]
    iam = ps.client(url, "iam")
    out += [r["RoleName"] for r in iam.list_roles()["Roles"] if r["RoleName"].startswith("fitters-log-dev")]
    out += [p["InstanceProfileName"] for p in iam.list_instance_profiles()["InstanceProfiles"]
            if p["InstanceProfileName"].startswith("fitters-log-dev")]
    out += [b["Name"] for b in ps.client(url, "s3").list_buckets()["Buckets"] if b["Name"].startswith("fitters-log-dev")]
    return sorted(out)


def sg(url, name="fitters-log-dev-ota-sg"):
    groups = ps.client(url, "ec2").describe_security_groups(
        Filters=[{"Name": "group-name", "Values": [name]}])["SecurityGroups"]
    assert len(groups) == 1
    return groups[0]


def rules(group):
    return sorted((p["FromPort"], r["CidrIp"]) for p in group["IpPermissions"] for r in p.get("IpRanges") or [])


def test_create_from_nothing_then_rerun_changes_nothing(fab, world):
    inv = inventory(world)
    r = fab("provision", "-i", str(inv), env=world["env"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("created ") >= 8
    url = world["url"]
    ec2 = ps.client(url, "ec2")
    inst = [i for res in ec2.describe_instances(Filters=[{"Name": "tag:Name", "Values": ["fitters-log-dev-ota"]}])
            ["Reservations"] for i in res["Instances"]]
    assert len(inst) == 1 and inst[0]["State"]["Name"] == "running"
    i = inst[0]
    tags = {t["Key"]: t["Value"] for t in i["Tags"]}
    assert tags["ManagedBy"] == "fabship" and tags["fabship:project"] == "fitters-log" and tags["fabship:env"] == "dev"
    assert i["InstanceType"] == "t3.small" and i["SubnetId"] == world["subnets"]["fitters-log-dev-public-a"][0]
    assert i["ImageId"].startswith("ami-") and i["KeyName"] == "fitters-log-dev-ota-key"
    assert i["IamInstanceProfile"]["Arn"].endswith("instance-profile/fitters-log-dev-ota-profile")
    vol = ec2.describe_volumes(VolumeIds=[i["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]])["Volumes"][0]
    assert vol["VolumeType"] == "gp3" and vol["Size"] == 20
    group = sg(url)
    assert rules(group) == [(22, "203.0.113.7/32"), (80, "0.0.0.0/0"), (443, "0.0.0.0/0")]
    assert [g["GroupId"] for g in i["SecurityGroups"]] == [group["GroupId"]]
    eip = ec2.describe_addresses(Filters=[{"Name": "tag:Name", "Values": ["fitters-log-dev-ota-eip"]}])["Addresses"][0]
    assert eip["InstanceId"] == i["InstanceId"]
    s3 = ps.client(url, "s3")
    pab = s3.get_public_access_block(Bucket="fitters-log-dev-ota-bucket")["PublicAccessBlockConfiguration"]
    assert all(pab.values()) and len(pab) == 4
    iam = ps.client(url, "iam")
    doc = iam.get_role_policy(RoleName="fitters-log-dev-ota-role", PolicyName="fabship-s3-access")["PolicyDocument"]
    assert {s["Resource"] for s in doc["Statement"]} == {"arn:aws:s3:::fitters-log-dev-ota-bucket",
                                                         "arn:aws:s3:::fitters-log-dev-ota-bucket/*"}
    r53 = ps.client(url, "route53")
    recs = {(x["Name"], x["Type"]): x for x in r53.list_resource_record_sets(HostedZoneId=world["zone"])["ResourceRecordSets"]}
    assert recs[("ota-dev.example.com.", "A")]["ResourceRecords"] == [{"Value": eip["PublicIp"]}]
    # the host key is recorded because the console output vouches for it
    kh = (world["tmp"] / "known_hosts").read_text()
    assert kh == f"{eip['PublicIp']} {ps.HOST_KEY[0]} {ps.HOST_KEY[1]}\n"
    assert "fitters-log-dev-ota" in r.stdout and "ready for fab bootstrap" in r.stdout
    # ... and the normal EC2 discovery finds it
    h = fab("hosts", "-i", str(inv), env=world["env"])
    assert h.returncode == 0 and eip["PublicIp"] in h.stdout, h.stdout + h.stderr

    before = ps.snapshot(url)
    again = fab("provision", "-i", str(inv), env=world["env"])
    assert again.returncode == 0, again.stdout + again.stderr
    assert "created " not in again.stdout and "changed " not in again.stdout
    assert "9 ok" in again.stdout
    assert ps.snapshot(url) == before


def test_drift_is_repaired(fab, world):
    inv = inventory(world)
    assert fab("provision", "-i", str(inv), env=world["env"]).returncode == 0
    url, ec2 = world["url"], ps.client(world["url"], "ec2")
    gid = sg(url)["GroupId"]
    # by hand: the SSH rule removed, a wide one added, a tag dropped, the record pointed elsewhere
    ec2.revoke_security_group_ingress(GroupId=gid, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "203.0.113.7/32"}]}])
    ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    ec2.delete_tags(Resources=[gid], Tags=[{"Key": "Name"}])
    r53 = ps.client(url, "route53")
    r53.change_resource_record_sets(HostedZoneId=world["zone"], ChangeBatch={"Changes": [{"Action": "UPSERT",
        "ResourceRecordSet": {"Name": "ota-dev.example.com.", "Type": "A", "TTL": 300,
                              "ResourceRecords": [{"Value": "198.51.100.9"}]}}]})
    r = fab("provision", "-i", str(inv), env=world["env"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "changed        security group fitters-log-dev-ota-sg" in r.stdout
    assert "revoke 22/tcp from 0.0.0.0/0" in r.stdout and "allow 22/tcp from 203.0.113.7/32" in r.stdout
    assert "changed        dns record ota-dev.example.com" in r.stdout
    assert rules(sg(url)) == [(22, "203.0.113.7/32"), (80, "0.0.0.0/0"), (443, "0.0.0.0/0")]
    assert {t["Key"]: t["Value"] for t in sg(url)["Tags"]}["Name"] == "fitters-log-dev-ota-sg"
    eip = ec2.describe_addresses(Filters=[{"Name": "tag:Name", "Values": ["fitters-log-dev-ota-eip"]}])["Addresses"][0]
    a = [x for x in r53.list_resource_record_sets(HostedZoneId=world["zone"])["ResourceRecordSets"]
         if x["Type"] == "A" and x["Name"] == "ota-dev.example.com."][0]
    assert a["ResourceRecords"] == [{"Value": eip["PublicIp"]}]
    third = fab("provision", "-i", str(inv), env=world["env"])
    assert "changed " not in third.stdout and "created " not in third.stdout


def test_dry_run_writes_nothing(fab, world):
    inv = inventory(world)
    before = ps.snapshot(world["url"])
    r = fab("provision", "-i", str(inv), "--dry-run", env=world["env"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "would create   ec2 instance fitters-log-dev-ota" in r.stdout
    assert "would call ec2:RunInstances" in r.stdout and "would call s3:CreateBucket" in r.stdout
    assert ps.snapshot(world["url"]) == before
    assert not (world["tmp"] / "known_hosts").exists()
    # and on a provisioned account: the drift is planned, not repaired
    assert fab("provision", "-i", str(inv), env=world["env"]).returncode == 0
    gid = sg(world["url"])["GroupId"]
    ps.client(world["url"], "ec2").revoke_security_group_ingress(GroupId=gid, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    before = ps.snapshot(world["url"])
    r = fab("provision", "-i", str(inv), "--dry-run", env=world["env"])
    assert "would change   security group fitters-log-dev-ota-sg: allow 443/tcp from 0.0.0.0/0" in r.stdout
    assert "would call ec2:AuthorizeSecurityGroupIngress" in r.stdout
    assert ps.snapshot(world["url"]) == before


def test_destroy_removes_managed_only(fab, world):
    url = world["url"]
    ec2 = ps.client(url, "ec2")
    # unmanaged neighbours: same Name tag pattern, another project's tags, a foreign object in "our" zone
    other = ec2.create_security_group(GroupName="someone-elses-sg", Description="x", VpcId=world["vpc"],
                                      TagSpecifications=[{"ResourceType": "security-group", "Tags": [
                                          {"Key": "ManagedBy", "Value": "fabship"},
                                          {"Key": "fabship:project", "Value": "other"},
                                          {"Key": "fabship:env", "Value": "dev"}]}])["GroupId"]
    inv = inventory(world)
    assert fab("provision", "-i", str(inv), env=world["env"]).returncode == 0
    ps.client(url, "s3").put_object(Bucket="fitters-log-dev-ota-bucket", Key="bundle.zip", Body=b"x")
    assert len(managed(url)) == 7
    refused = fab("provision", "-i", str(inv), "--destroy", env=world["env"])
    assert refused.returncode != 0 and "--yes" in refused.stderr and "nothing was deleted" in refused.stderr
    assert len(managed(url)) == 7
    r = fab("provision", "-i", str(inv), "--destroy", "--yes", env=world["env"])
    assert r.returncode == 0, r.stdout + r.stderr
    # the bucket holds an object: kept unless --delete-bucket
    assert managed(url) == ["fitters-log-dev-ota-bucket"]
    assert "kept" in r.stdout and "--delete-bucket" in r.stdout
    assert not ec2.describe_addresses()["Addresses"]          # the EIP was released
    assert not (world["tmp"] / "known_hosts").read_text().strip()
    r = fab("provision", "-i", str(inv), "--destroy", "--yes", "--delete-bucket", env=world["env"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert managed(url) == []
    assert ec2.describe_security_groups(GroupIds=[other])["SecurityGroups"]
    assert [z["Name"] for z in ps.client(url, "route53").list_hosted_zones()["HostedZones"]] == ["example.com."]


def test_collision_with_unmanaged_resources_is_refused_and_left_alone(fab, world):
    url = world["url"]
    ec2 = ps.client(url, "ec2")
    gid = ec2.create_security_group(GroupName="fitters-log-dev-ota-sg", Description="by hand",
                                    VpcId=world["vpc"])["GroupId"]
    ps.client(url, "iam").create_role(RoleName="fitters-log-dev-ota-role", AssumeRolePolicyDocument="{}")
    inv = inventory(world)
    before = ps.snapshot(url)
    r = fab("provision", "-i", str(inv), env=world["env"])
    assert r.returncode != 0
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "iam role fitters-log-dev-ota-role" in err[0] and "not managed by fabship" in err[0]
    assert ps.snapshot(url) == before            # refused before anything was written
    d = fab("provision", "-i", str(inv), "--destroy", "--yes", env=world["env"])
    assert d.returncode == 0, d.stdout + d.stderr
    assert "left alone" in d.stdout
    assert ec2.describe_security_groups(GroupIds=[gid])["SecurityGroups"]
    assert ps.client(url, "iam").get_role(RoleName="fitters-log-dev-ota-role")


def test_unmanaged_dns_record_is_not_overwritten(fab, world):
    r53 = ps.client(world["url"], "route53")
    r53.change_resource_record_sets(HostedZoneId=world["zone"], ChangeBatch={"Changes": [{"Action": "CREATE",
        "ResourceRecordSet": {"Name": "ota-dev.example.com.", "Type": "A", "TTL": 60,
                              "ResourceRecords": [{"Value": "198.51.100.1"}]}}]})
    before = ps.snapshot(world["url"])
    r = fab("provision", "-i", str(inventory(world)), env=world["env"])
    assert r.returncode != 0 and "dns record ota-dev.example.com" in r.stderr and "not managed" in r.stderr
    assert ps.snapshot(world["url"]) == before


@pytest.mark.parametrize("change, expect", [
    ("subnet: {name: fitters-log-dev-public-a}", None),
    ("subnet: {name: fitters-log-dev-twice}", "provision.subnet: 2 subnets match tag:Name=fitters-log-dev-twice"),
    ("subnet: {name: nowhere}", "provision.subnet: no subnet matches tag:Name=nowhere"),
])
def test_subnet_reference(fab, world, change, expect):
    text = ps.write_inventory(world["tmp"], world["url"]).read_text().replace(
        "subnet: {name: fitters-log-dev-public-a}", change)
    p = _with_ip(world, text)
    before = ps.snapshot(world["url"])
    r = fab("provision", "-i", str(p), "--dry-run", env=world["env"])
    if expect is None:
        assert r.returncode == 0, r.stderr
        return
    assert r.returncode != 0 and expect in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert ps.snapshot(world["url"]) == before


def test_ami_filter_matching_nothing(fab, world):
    text = ps.write_inventory(world["tmp"], world["url"]).read_text().replace(
        "instance: {type: t3.small, wait_timeout: 20}",
        "instance: {type: t3.small, wait_timeout: 20, ami: {name: no-such-image-*}}")
    before = ps.snapshot(world["url"])
    r = fab("provision", "-i", str(_with_ip(world, text)), env=world["env"])
    assert r.returncode != 0
    assert "provision.instance.ami: no image matches name=no-such-image-* owner=amazon" in r.stderr, r.stderr
    assert ps.snapshot(world["url"]) == before


def test_failure_half_way_names_what_was_created_and_a_rerun_finishes(fab, world):
    # the address is taken by an unmanaged instance: EC2 refuses RunInstances after the
    # bucket, role, group ... were created
    ec2 = ps.client(world["url"], "ec2")
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, SubnetId=world["subnets"]["fitters-log-dev-public-a"][0],
                      PrivateIpAddress="10.20.1.10")
    r = fab("provision", "-i", str(inventory(world)), env=world["env"])
    assert r.returncode != 0
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line, r.stderr
    assert "ec2 instance fitters-log-dev-ota: ec2:RunInstances" in line
    assert "before the failure: created s3 bucket fitters-log-dev-ota-bucket" in line
    assert "created security group fitters-log-dev-ota-sg" in line and "a rerun finishes the job" in line
    p = world["tmp"] / "prov.yaml"
    p.write_text(p.read_text().replace("10.20.1.10", "10.20.1.11"))
    (world["console"] / "10.20.1.11.txt").write_text(hostkeys.console_block([ps.HOST_KEY]))
    r = fab("provision", "-i", str(p), env=world["env"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "created        ec2 instance" in r.stdout and "created        s3 bucket" not in r.stdout


def test_host_key_mismatch_is_refused(fab, world):
    other = ("ssh-ed25519", "AAAAC3NzaC1lZDI1NTE5AAAAIDs0l9zk1PZL3fY2V5kC2pq2x3z4sX8n2o0wq5P4bBbT")
    (world["console"] / "10.20.1.10.txt").write_text(hostkeys.console_block([other]))
    r = fab("provision", "-i", str(inventory(world)), env=world["env"])
    assert r.returncode != 0
    assert "not among the host keys in" in r.stderr and "refusing to trust it" in r.stderr, r.stderr
    assert not (world["tmp"] / "known_hosts").exists()
