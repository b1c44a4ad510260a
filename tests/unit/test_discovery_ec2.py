"""EC2 discovery against moto's real HTTP server (not a patched boto3)."""
import textwrap

import boto3
import pytest

from tasks.config import discovery
from tasks.core.errors import DiscoveryError
from tasks.config.inventory import load_inventory


@pytest.fixture
def ec2(moto_server, aws_env):
    return boto3.client("ec2", region_name="eu-west-1", endpoint_url=moto_server)


def launch(ec2, name, n=1, state="running", extra_tags=()):
    r = ec2.run_instances(ImageId="ami-12345678", MinCount=n, MaxCount=n, TagSpecifications=[{
        "ResourceType": "instance",
        "Tags": [{"Key": "Name", "Value": name}, *[{"Key": k, "Value": v} for k, v in extra_tags]]}])
    ids = [i["InstanceId"] for i in r["Instances"]]
    if state == "stopped":
        ec2.stop_instances(InstanceIds=ids)
    elif state == "terminated":
        ec2.terminate_instances(InstanceIds=ids)
    return r["Instances"]


def inventory(tmp_path, moto_server, name_tag, **ec2_extra):
    extra = "".join(f"\n    {k}: {v}" for k, v in ec2_extra.items())
    p = tmp_path / "ec2.yaml"
    p.write_text(textwrap.dedent(f"""\
        hosts:
          ec2:
            region: eu-west-1
            endpoint_url: {moto_server}
            filters: {{"tag:Name": {name_tag}}}""") + extra + "\nssh: {user: ec2-user}\n")
    return load_inventory(str(p))


def test_tag_match_and_state_filter(ec2, tmp_path, moto_server):
    running = launch(ec2, "fitters-log-dev-ota", 2)
    launch(ec2, "fitters-log-dev-ota", 1, state="stopped")
    launch(ec2, "fitters-log-prod-ota", 1)
    hosts = inventory(tmp_path, moto_server, "fitters-log-dev-ota").resolve_hosts()
    assert sorted(h.address for h in hosts) == sorted(i["PrivateIpAddress"] for i in running)
    assert all(h.user == "ec2-user" and h.source.startswith("ec2 eu-west-1 i-") for h in hosts)
    assert all(h.tags["Name"] == "fitters-log-dev-ota" for h in hosts)
    # duplicate Name tags get the instance id so names stay unique
    assert len({h.name for h in hosts}) == 2


def test_explicit_state_filter_wins(ec2, tmp_path, moto_server):
    stopped = launch(ec2, "state-test", 1, state="stopped")
    launch(ec2, "state-test", 1)
    p = tmp_path / "s.yaml"
    p.write_text(f"hosts:\n  ec2:\n    region: eu-west-1\n    endpoint_url: {moto_server}\n"
                 f"    filters: {{'tag:Name': state-test, instance-state-name: stopped}}\n")
    hosts = load_inventory(str(p)).resolve_hosts()
    assert [h.address for h in hosts] == [stopped[0]["PrivateIpAddress"]]


@pytest.mark.parametrize("choice, field", [("private_ip", "PrivateIpAddress"), ("public_ip", "PublicIpAddress"),
                                           ("public_dns", "PublicDnsName")])
def test_address_choice(ec2, tmp_path, moto_server, choice, field):
    inst = launch(ec2, f"addr-{choice}", 1)[0]
    desc = ec2.describe_instances(InstanceIds=[inst["InstanceId"]])["Reservations"][0]["Instances"][0]
    hosts = inventory(tmp_path, moto_server, f"addr-{choice}", address=choice).resolve_hosts()
    assert [h.address for h in hosts] == [desc[field]]
    assert hosts[0].name == f"addr-{choice}"


def test_more_than_one_page(ec2, tmp_path, moto_server, monkeypatch):
    for _ in range(7):  # separate reservations: moto pages by reservation
        launch(ec2, "paged", 1)
    calls = []
    real = discovery.ec2_client

    def counting_client(spec, service="ec2", **kw):
        c = real(spec, service, **kw)
        c.meta.events.register("before-call.ec2.DescribeInstances", lambda **k: calls.append(1))
        return c

    monkeypatch.setattr(discovery, "ec2_client", counting_client)
    orig = discovery.describe_instances

    def small_pages(spec):
        client = discovery.ec2_client(spec)
        out = []
        for page in client.get_paginator("describe_instances").paginate(
                Filters=discovery.ec2_filters(spec), PaginationConfig={"PageSize": 3}):
            for r in page["Reservations"]:
                out.extend(r["Instances"])
        return out

    monkeypatch.setattr(discovery, "describe_instances", small_pages)
    hosts = inventory(tmp_path, moto_server, "paged").resolve_hosts()
    assert len(hosts) == 7
    assert len(calls) >= 3
    assert orig is not small_pages


def test_empty_result_is_refused(ec2, tmp_path, moto_server):
    with pytest.raises(DiscoveryError, match="no instances in eu-west-1 match tag:Name=nothing-here"):
        inventory(tmp_path, moto_server, "nothing-here").resolve_hosts()


def test_max_hosts_guard(ec2, tmp_path, moto_server):
    launch(ec2, "guarded", 3)
    with pytest.raises(DiscoveryError, match="3 instances match .* more than max_hosts=2; refusing"):
        inventory(tmp_path, moto_server, "guarded", max_hosts=2).resolve_hosts()


def test_aws_endpoint_url_env_is_honoured(ec2, tmp_path, moto_server, monkeypatch):
    launch(ec2, "via-env", 1)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    p = tmp_path / "e.yaml"
    p.write_text("hosts:\n  ec2:\n    region: eu-west-1\n    filters: {'tag:Name': via-env}\n")
    assert len(load_inventory(str(p)).resolve_hosts()) == 1


def test_unreachable_endpoint_is_one_clear_error(aws_env, tmp_path):
    p = tmp_path / "e.yaml"
    p.write_text("hosts:\n  ec2:\n    region: eu-west-1\n    endpoint_url: http://127.0.0.1:9\n")
    with pytest.raises(DiscoveryError, match="cannot reach the EC2 API"):
        load_inventory(str(p)).resolve_hosts()


def test_filters_default_to_running():
    assert discovery.ec2_filters({"filters": {"tag:Name": "x", "tag:Env": ["a", "b"]}}) == [
        {"Name": "tag:Name", "Values": ["x"]},
        {"Name": "tag:Env", "Values": ["a", "b"]},
        {"Name": "instance-state-name", "Values": ["running"]},
    ]


# -- Name tags are anyone-with-CreateTags' text: never used verbatim when unsafe ----------------

@pytest.mark.parametrize("evil", [
    "web1\n  ProxyCommand touch /tmp/pwned",   # a new ssh_config line
    "web1; return 301 http://evil.example",     # nginx directives through server_name "{host}..."
    "../../etc/cron.d/x",                        # out of fab diagnose --out
    "web 1",
])
def test_unsafe_name_tag_falls_back_to_the_instance_id(ec2, tmp_path, moto_server, capsys, evil):
    role = f"bad-name-{abs(hash(evil))}"  # one moto server for the session: a role of its own
    inst = launch(ec2, evil, 1, extra_tags=[("Role", role)])[0]
    p = tmp_path / "bad.yaml"
    p.write_text(f"hosts:\n  ec2:\n    region: eu-west-1\n    endpoint_url: {moto_server}\n"
                 f"    filters: {{'tag:Role': {role}}}\n"
                 "nginx: {server_name: '{host}.example.com'}\n")
    inv = load_inventory(str(p))
    hosts = inv.resolve_hosts()
    iid = inst["InstanceId"]
    assert [h.name for h in hosts] == [iid]
    assert hosts[0].tags["Name"] == evil  # the tag itself is still there, for groups by tag
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: hosts.ec2: instance " + iid) and f"using {iid}" in err[0]
    assert hosts[0].expand(inv.data["nginx"]["server_name"]) == f"{iid}.example.com"
    from tasks.verify.gate import ssh_config_text

    text = ssh_config_text(inv, hosts)
    assert "ProxyCommand" not in text and f"Host {iid}\n" in text


def test_safe_name_tag_is_kept_and_duplicates_still_get_the_id(ec2, tmp_path, moto_server, capsys):
    launch(ec2, "ok-name.web_1", 1, extra_tags=[("Role", "good-name-test")])
    p = tmp_path / "good.yaml"
    p.write_text(f"hosts:\n  ec2:\n    region: eu-west-1\n    endpoint_url: {moto_server}\n"
                 f"    filters: {{'tag:Role': good-name-test}}\n")
    assert [h.name for h in load_inventory(str(p)).resolve_hosts()] == ["ok-name.web_1"]
    assert capsys.readouterr().err == ""
