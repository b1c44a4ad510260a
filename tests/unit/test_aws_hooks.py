"""tasks/release/alb.py against moto's real HTTP server (ELBv2 + EC2): a host
leaves its ALB target group around its deploy and comes back healthy.

moto models no draining and no ALB health checks (a deregistered target is
gone at once, a registered running instance is healthy at once, a stopped one
stays 'unused'). The one state moto cannot produce, a target stuck in
'draining', comes from a thin wrapper over the real moto client."""
import threading
import time

import boto3
import pytest
import yaml

from tasks.release import alb as aws_hooks
from tasks.release.alb import AlbTarget, alb_config, alb_out_of_service, preflight
from tasks.core.errors import ConfigError, FabshipError, StepFailed
from tasks.config.inventory import load_inventory
from tasks.core.runner import Run

REGION = "eu-west-1"


@pytest.fixture
def aws(moto_server, aws_env):
    kw = dict(region_name=REGION, endpoint_url=moto_server)
    return boto3.client("ec2", **kw), boto3.client("elbv2", **kw)


_n = [0]


@pytest.fixture
def alb(aws):
    """A VPC, two subnets, an ALB and an instance target group (unique per test)."""
    ec2, elb = aws
    _n[0] += 1
    n = _n[0]
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=f"{REGION}{z}")
               ["Subnet"]["SubnetId"] for i, z in ((1, "a"), (2, "b"))]
    lb = elb.create_load_balancer(Name=f"lb{n}", Subnets=subnets)["LoadBalancers"][0]
    tg = elb.create_target_group(Name=f"tg{n}", Protocol="HTTP", Port=80, VpcId=vpc,
                                 TargetType="instance")["TargetGroups"][0]
    elb.create_listener(LoadBalancerArn=lb["LoadBalancerArn"], Protocol="HTTP", Port=80,
                        DefaultActions=[{"Type": "forward", "TargetGroupArn": tg["TargetGroupArn"]}])
    return {"ec2": ec2, "elb": elb, "vpc": vpc, "subnets": subnets, "arn": tg["TargetGroupArn"], "n": n}


def launch(alb, count):
    r = alb["ec2"].run_instances(ImageId="ami-12345678", MinCount=count, MaxCount=count,
                                 SubnetId=alb["subnets"][0])
    return [(i["InstanceId"], i["PrivateIpAddress"]) for i in r["Instances"]]


def register(alb, ids, arn=None):
    alb["elb"].register_targets(TargetGroupArn=arn or alb["arn"], Targets=[{"Id": i} for i in ids])


def health(alb, arn=None) -> dict:
    descs = alb["elb"].describe_target_health(TargetGroupArn=arn or alb["arn"])["TargetHealthDescriptions"]
    return {d["Target"]["Id"]: d["TargetHealth"]["State"] for d in descs}


def make_run(tmp_path, moto_server, instances, arn, dry_run=False, **hook):
    static = {f"web{i + 1}": {"address": ip, "tags": {"instance-id": iid}}
              for i, (iid, ip) in enumerate(instances)}
    data = {"hosts": {"static": static},
            "hooks": {"alb": {"target_group_arn": arn, "endpoint_url": moto_server,
                              "poll_interval": 0.05, "drain_timeout": 2, "register_timeout": 2, **hook}}}
    p = tmp_path / "alb.yaml"
    p.write_text(yaml.safe_dump(data))
    inv = load_inventory(str(p))
    return Run("deploy", inv, inv.resolve_hosts(), dry_run=dry_run)


def steps(ctx):
    return [(s.name, s.status) for s in ctx.steps]


def test_out_of_service_around_deploy(alb, tmp_path, moto_server):
    insts = launch(alb, 3)
    ids = [i for i, _ in insts]
    register(alb, ids)
    run = make_run(tmp_path, moto_server, insts, alb["arn"])
    ctx = run.contexts["web1"]
    seen = {}

    def fake_deploy():
        seen.update(health(alb))

    with alb_out_of_service(ctx):
        fake_deploy()
    # During the deploy the host was out, the others stayed in service.
    assert seen == {ids[1]: "healthy", ids[2]: "healthy"}
    assert health(alb) == {i: "healthy" for i in ids}
    assert steps(ctx) == [("alb deregister", "changed"), ("alb register", "changed")]
    assert "drained" in ctx.steps[0].message and "healthy" in ctx.steps[1].message


def test_failed_deploy_registers_again_and_reraises(alb, tmp_path, moto_server):
    insts = launch(alb, 2)
    register(alb, [i for i, _ in insts])
    run = make_run(tmp_path, moto_server, insts, alb["arn"])
    ctx = run.contexts["web2"]
    with pytest.raises(StepFailed, match="health check"):
        with alb_out_of_service(ctx):
            assert insts[1][0] not in health(alb)
            raise StepFailed("health check failed")
    assert health(alb) == {insts[0][0]: "healthy", insts[1][0]: "healthy"}


def test_unregistered_host_joins_only_after_success(alb, tmp_path, moto_server):
    insts = launch(alb, 2)
    register(alb, [insts[0][0]])
    run = make_run(tmp_path, moto_server, insts, alb["arn"])
    ctx = run.contexts["web2"]
    with pytest.raises(RuntimeError):
        with alb_out_of_service(ctx):
            raise RuntimeError("deploy broke")
    assert insts[1][0] not in health(alb)  # left as found
    with alb_out_of_service(ctx):
        pass
    assert health(alb)[insts[1][0]] == "healthy"
    assert ("alb deregister", "ok") in steps(ctx) and steps(ctx)[-1] == ("alb register", "changed")


def test_refuses_to_take_the_last_healthy_target(alb, tmp_path, moto_server):
    insts = launch(alb, 2)
    ids = [i for i, _ in insts]
    register(alb, ids)
    run = make_run(tmp_path, moto_server, insts, alb["arn"])
    first = AlbTarget(run.contexts["web1"], alb_config(run.inv))
    first.take_out()
    try:
        ran = []
        with pytest.raises(StepFailed, match="min_in_service=1"):
            with alb_out_of_service(run.contexts["web2"]):
                ran.append(1)
        assert ran == []  # the deploy never started
        assert health(alb) == {ids[1]: "healthy"}  # web2 still serving
    finally:
        first.put_back()
    assert health(alb) == {i: "healthy" for i in ids}


def test_parallel_hosts_leave_one_serving(alb, tmp_path, moto_server):
    insts = launch(alb, 3)
    ids = [i for i, _ in insts]
    register(alb, ids)
    run = make_run(tmp_path, moto_server, insts, alb["arn"])
    lows = []
    lock = threading.Lock()

    def deploy_one(ctx):
        with alb_out_of_service(ctx):
            with lock:
                lows.append(sum(1 for s in health(alb).values() if s == "healthy"))
            time.sleep(0.5)

    run.each(deploy_one)
    refused = [n for n, c in run.contexts.items() if c.error]
    assert len(refused) == 1 and "min_in_service" in run.contexts[refused[0]].error
    assert min(lows) >= 1
    assert health(alb) == {i: "healthy" for i in ids}


def test_single_target_group_is_allowed(alb, tmp_path, moto_server):
    insts = launch(alb, 1)
    register(alb, [insts[0][0]])
    run = make_run(tmp_path, moto_server, insts, alb["arn"])
    with alb_out_of_service(run.contexts["web1"]):
        assert health(alb) == {}
    assert health(alb) == {insts[0][0]: "healthy"}


def test_dry_run_changes_nothing(alb, tmp_path, moto_server):
    insts = launch(alb, 2)
    register(alb, [i for i, _ in insts])
    run = make_run(tmp_path, moto_server, insts, alb["arn"], dry_run=True)
    ctx = run.contexts["web1"]
    with alb_out_of_service(ctx):
        assert len(health(alb)) == 2
    assert len(health(alb)) == 2
    assert steps(ctx) == [("alb deregister", "changed"), ("alb register", "changed")]
    assert all(s.dry_run for s in ctx.steps)
    assert "would deregister" in ctx.steps[0].message


class StuckDraining:
    """The real moto client, except that describe_target_health reports the
    deregistered target as 'draining' (moto has no deregistration delay)."""

    def __init__(self, real, target_id):
        self.real, self.target_id, self.deregistered = real, target_id, False

    def __getattr__(self, name):
        return getattr(self.real, name)

    def deregister_targets(self, **kw):
        self.deregistered = True
        return self.real.deregister_targets(**kw)

    def register_targets(self, **kw):
        self.deregistered = False
        return self.real.register_targets(**kw)

    def describe_target_health(self, **kw):
        r = self.real.describe_target_health(**kw)
        if self.deregistered and kw.get("Targets"):
            return {"TargetHealthDescriptions": [{"Target": {"Id": self.target_id, "Port": 80},
                                                  "TargetHealth": {"State": "draining",
                                                                   "Reason": "Target.DeregistrationInProgress"}}]}
        return r


def test_drain_timeout_puts_host_back_and_deploys_nothing(alb, tmp_path, moto_server):
    insts = launch(alb, 2)
    ids = [i for i, _ in insts]
    register(alb, ids)
    run = make_run(tmp_path, moto_server, insts, alb["arn"], drain_timeout=0.3)
    client = StuckDraining(alb["elb"], ids[0])
    ran = []
    with pytest.raises(StepFailed, match=r"still draining \(Target.DeregistrationInProgress\) after "
                                         r"hooks.alb.drain_timeout=0.3s \(the target group's deregistration "
                                         r"delay is 300s\)"):
        with alb_out_of_service(run.contexts["web1"], client=client):
            ran.append(1)
    assert ran == []
    assert health(alb) == {i: "healthy" for i in ids}


def test_register_refused_is_a_failed_step(alb, tmp_path, moto_server):
    insts = launch(alb, 2)
    ids = [i for i, _ in insts]
    register(alb, ids)
    run = make_run(tmp_path, moto_server, insts, alb["arn"])
    ctx = run.contexts["web1"]
    with pytest.raises(StepFailed, match=r"alb register: i-\w+ in tg\d+: hooks.alb: register_targets on target "
                                         r"group tg\d+ refused: InvalidTarget"):
        with alb_out_of_service(ctx):
            alb["ec2"].stop_instances(InstanceIds=[ids[0]])  # the host died during its deploy
    assert steps(ctx)[-1] == ("alb register", "failed")


class DiesAfterRegister:
    """The real moto client; the instance stops right after it is registered
    (moto refuses to register a stopped instance, as AWS does)."""

    def __init__(self, real, ec2, instance_id):
        self.real, self.ec2, self.instance_id = real, ec2, instance_id

    def __getattr__(self, name):
        return getattr(self.real, name)

    def register_targets(self, **kw):
        r = self.real.register_targets(**kw)
        self.ec2.stop_instances(InstanceIds=[self.instance_id])
        return r


def test_register_timeout_names_the_state(alb, tmp_path, moto_server):
    insts = launch(alb, 2)
    ids = [i for i, _ in insts]
    register(alb, ids)
    run = make_run(tmp_path, moto_server, insts, alb["arn"], register_timeout=0.2)
    ctx = run.contexts["web1"]
    with pytest.raises(StepFailed, match=r"registered but still unused \(Target.InvalidState\) after "
                                         r"hooks.alb.register_timeout=0.2s: Target is in the stopped state"):
        with alb_out_of_service(ctx, client=DiesAfterRegister(alb["elb"], alb["ec2"], ids[0])):
            pass
    assert steps(ctx)[-1] == ("alb register", "failed")


def test_ip_target_group_uses_the_address(alb, tmp_path, moto_server):
    tg = alb["elb"].create_target_group(Name=f"ip{alb['n']}", Protocol="HTTP", Port=80, VpcId=alb["vpc"],
                                        TargetType="ip")["TargetGroups"][0]
    arn = tg["TargetGroupArn"]
    alb["elb"].register_targets(TargetGroupArn=arn, Targets=[{"Id": "10.0.1.5", "Port": 8080},
                                                             {"Id": "10.0.1.6", "Port": 8080}])
    run = make_run(tmp_path, moto_server, [("i-unused", "10.0.1.5"), ("i-unused2", "10.0.1.6")], arn, port=8080)
    with alb_out_of_service(run.contexts["web1"]):
        assert health(alb, arn) == {"10.0.1.6": "healthy"}
    assert health(alb, arn) == {"10.0.1.5": "healthy", "10.0.1.6": "healthy"}


# -- checks before connecting ------------------------------------------------------------

def write_inv(tmp_path, hosts, alb_hook):
    p = tmp_path / "pre.yaml"
    p.write_text(yaml.safe_dump({"hosts": {"static": hosts}, "hooks": {"alb": alb_hook}}))
    return p


def test_preflight_needs_an_instance_id(alb, tmp_path, moto_server):
    p = write_inv(tmp_path, {"web1": "10.0.1.9"}, {"target_group_arn": alb["arn"], "endpoint_url": moto_server})
    inv = load_inventory(str(p))
    with pytest.raises(ConfigError, match=r"pre.yaml: hooks.alb: host web1: target group tg\d+ registers "
                                          r"instances, but the host has no instance id"):
        preflight(inv, inv.resolve_hosts())


def test_preflight_unknown_target_group(aws, tmp_path, moto_server):
    arn = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/nope/0123456789abcdef"
    inv = load_inventory(str(write_inv(tmp_path, {"web1": "10.0.1.9"},
                                       {"target_group_arn": arn, "endpoint_url": moto_server})))
    with pytest.raises(FabshipError, match=r"hooks.alb: describe_target_groups on target group nope refused: "
                                           r"TargetGroupNotFound"):
        preflight(inv, inv.resolve_hosts())


def test_region_must_match_the_arn(tmp_path):
    arn = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/tg/0123456789abcdef"
    inv = load_inventory(str(write_inv(tmp_path, {"web1": "10.0.1.9"},
                                       {"target_group_arn": arn, "region": "us-east-1"})))
    with pytest.raises(ConfigError, match="hooks.alb.region: 'us-east-1' differs from the target group "
                                          "ARN's region 'eu-west-1'"):
        alb_config(inv)
    cfg = alb_config(load_inventory(str(write_inv(tmp_path, {"web1": "10.0.1.9"}, {"target_group_arn": arn}))))
    assert (cfg.region, cfg.name, cfg.drain_timeout, cfg.min_in_service) == ("eu-west-1", "tg", 30.0, 1)


@pytest.mark.parametrize("arn", ["arn:aws:elasticloadbalancing:eu-west-1:123:loadbalancer/app/x/1",
                                 "tg-1234", "arn:aws:ec2:eu-west-1:123:targetgroup/x/1"])
def test_bad_arn_is_a_config_error(tmp_path, arn):
    with pytest.raises(ConfigError, match=r"pre.yaml: hooks.alb.target_group_arn: expected a target group ARN"):
        load_inventory(str(write_inv(tmp_path, {"web1": "10.0.1.9"}, {"target_group_arn": arn})))


def test_no_hook_is_a_no_op(tmp_path):
    p = tmp_path / "plain.yaml"
    p.write_text("hosts: {static: {web1: 10.0.1.9}}\n")
    inv = load_inventory(str(p))
    run = Run("deploy", inv, inv.resolve_hosts())
    with alb_out_of_service(run.contexts["web1"]) as t:
        assert t is None
    assert run.contexts["web1"].steps == []
    assert preflight(inv, inv.resolve_hosts()) is None
