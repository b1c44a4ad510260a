"""System 4 end to end on h8: the Python model server (apps/model-server)
with inventories/sandbox-model.yaml: a venv per release under systemd on
port 8080 with /health; bootstrap, deploy v1/v2, a broken release rolled
back, rotate-env of the API key, rollback, verify."""
import json
import secrets

from test_e2e_support import INV, Flow, app_copy, env_file, h8  # noqa: F401

APP = "model-server"
ENV_PATH = f"/etc/{APP}/{APP}.env"
SAMPLE_ENV = INV / "sandbox-env" / "model.env"
KEY = "sandbox-model-api-key-0123456789abcdef"  # the dummy value in the sample env file


def version(f: Flow) -> str:
    status, _, body = f.http("http://127.0.0.1:8080/version")
    assert status == 200, f"/version: {status} {body[:200]}"
    return body.strip()


def predict(f: Flow, key: str) -> int:
    status, _, body = f.http("http://127.0.0.1:8080/predict", "-X", "POST", "-H", "content-type: application/json",
                             "-H", f"x-api-key: {key}", stdin_body=json.dumps({"inputs": [1, 2]}))
    if status == 200:
        assert json.loads(body)["outputs"], body
    return status


def test_model_server_end_to_end(h8, tmp_path):  # noqa: F811
    f = Flow(h8, tmp_path, "sandbox-model")

    f.fab("bootstrap")
    f.must("dpkg-query -W python3 python3-venv >/dev/null")
    assert f.stat(ENV_PATH) == f"root:{APP}:600"
    unit = f"{APP}.service"
    assert f.unit_prop(unit, "UnitFileState") == "enabled"
    assert "venv/bin/python app.py" in f.unit_prop(unit, "ExecStart")
    assert "PORT=8080" in f.unit_prop(unit, "ExecStart")
    f.fab("bootstrap")
    assert f.changed_steps("bootstrap") == [], "a second bootstrap changed something"

    f.fab("deploy", "--artifact", str(app_copy(tmp_path, APP, "1.0.0")))
    v1 = f.current_release(APP)
    f.must(f"test -x /opt/{APP}/releases/{v1}/venv/bin/python")  # the release's own venv
    assert version(f) == "1.0.0"
    status, _, body = f.http("http://127.0.0.1:8080/health")
    assert status == 200 and json.loads(body)["status"] == "ok"
    assert predict(f, KEY) == 200 and predict(f, "wrong-key") == 401
    assert f.unit_prop(unit, "User") == APP

    f.fab("deploy", "--artifact", str(app_copy(tmp_path, APP, "2.0.0")))
    v2 = f.current_release(APP)
    assert v2 != v1 and version(f) == "2.0.0"

    r = f.fab("deploy", "--artifact", str(app_copy(tmp_path, APP, "3.0.0", fail_health=True)),
              "--set", "health.retries=5", expect=1)
    assert "health" in (r.stdout + r.stderr).lower()
    assert f.current_release(APP) == v2 and version(f) == "2.0.0"

    before = f.sha(ENV_PATH)
    r = f.fab("rotate-env", "--env-file", str(env_file(tmp_path, SAMPLE_ENV, "bad.env", MODEL_API_KEY="short")),
              expect=2)
    assert "MODEL_API_KEY is shorter than min_length 32" in r.stderr and f.sha(ENV_PATH) == before
    new_key = secrets.token_hex(24)
    r = f.fab("rotate-env", "--env-file", str(env_file(tmp_path, SAMPLE_ENV, "new.env", MODEL_API_KEY=new_key)))
    assert new_key not in r.stdout + r.stderr
    assert predict(f, new_key) == 200 and predict(f, KEY) == 401
    assert f.stat(ENV_PATH) == f"root:{APP}:600"

    f.fab("rollback")
    assert f.current_release(APP) == v1 and version(f) == "1.0.0"

    r = f.fab("verify")
    assert f.host_result("verify")["result"] in ("ok", "passed"), r.stdout
    assert "predict_needs_key" in r.stdout


def test_model_server_deploy_behind_an_alb(h8, tmp_path):  # noqa: F811
    """Prod's shape (inventories/model-prod.yaml): the host leaves its ALB
    target group before the restart and rejoins healthy; ELBv2 is moto's
    HTTP server, the host is real."""
    import boto3
    import yaml
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        kw = dict(region_name="eu-west-1", endpoint_url=url, aws_access_key_id="testing",
                  aws_secret_access_key="testing")
        ec2, elb = boto3.client("ec2", **kw), boto3.client("elbv2", **kw)
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=f"eu-west-1{z}")
                   ["Subnet"]["SubnetId"] for i, z in ((1, "a"), (2, "b"))]
        elb.create_load_balancer(Name="visionml", Subnets=subnets)
        arn = elb.create_target_group(Name="visionml-model", Protocol="HTTP", Port=8080, VpcId=vpc,
                                      TargetType="instance")["TargetGroups"][0]["TargetGroupArn"]
        ids = [i["InstanceId"] for i in ec2.run_instances(ImageId="ami-12345678", MinCount=2, MaxCount=2,
                                                           SubnetId=subnets[0])["Instances"]]
        elb.register_targets(TargetGroupArn=arn, Targets=[{"Id": i} for i in ids])
        inv = tmp_path / "model-alb.yaml"
        inv.write_text(yaml.safe_dump({
            "include": [str(INV / "sandbox-model.yaml")],
            # h8 stands for the first instance; the second one keeps serving
            "hosts": {"static": {"h8": {"address": h8.host("h8").address, "tags": {"instance-id": ids[0]}}}},
            "deploy": {"batch": "1"},
            "hooks": {"alb": {"target_group_arn": arn, "endpoint_url": url, "poll_interval": 0.2,
                              "drain_timeout": 10, "register_timeout": 30}},
        }))
        f = Flow(h8, tmp_path, str(inv))
        f.fab("bootstrap")
        f.fab("deploy", "--artifact", str(app_copy(tmp_path, APP, "1.0.0")), "--dry-run")
        assert f.must(f"test -e /opt/{APP}/current && echo yes || echo no").strip() == "no"
        assert {"alb deregister", "alb register"} <= set(f.changed_steps("deploy"))
        health = {d["Target"]["Id"]: d["TargetHealth"]["State"]
                  for d in elb.describe_target_health(TargetGroupArn=arn)["TargetHealthDescriptions"]}
        assert health == {ids[0]: "healthy", ids[1]: "healthy"}  # the dry run changed nothing
        f.fab("deploy", "--artifact", str(app_copy(tmp_path, APP, "1.0.0")))
        steps = [(s["name"], s["status"]) for s in f.host_result("deploy")["steps"]]
        names = [n for n, _ in steps]
        assert ("alb deregister", "changed") in steps and ("alb register", "changed") in steps, steps
        # out of the target group before the app restarted, back in after it was healthy
        restart = next(i for i, n in enumerate(names) if "restart" in n or "switch" in n)
        assert names.index("alb deregister") < restart < names.index("alb register"), names
        health = {d["Target"]["Id"]: d["TargetHealth"]["State"]
                  for d in elb.describe_target_health(TargetGroupArn=arn)["TargetHealthDescriptions"]}
        assert health == {ids[0]: "healthy", ids[1]: "healthy"}
        assert version(f) == "1.0.0"
        # `fab rollback` takes the host out of the target group around its switch too
        f.fab("deploy", "--artifact", str(app_copy(tmp_path, APP, "1.0.1")))
        assert version(f) == "1.0.1"
        f.fab("rollback")
        names = [s["name"] for s in f.host_result("rollback")["steps"]]
        assert "alb deregister" in names and "alb register" in names, names
        assert names.index("alb deregister") < names.index("alb register"), names
        health = {d["Target"]["Id"]: d["TargetHealth"]["State"]
                  for d in elb.describe_target_health(TargetGroupArn=arn)["TargetHealthDescriptions"]}
        assert health == {ids[0]: "healthy", ids[1]: "healthy"}
        assert version(f) == "1.0.0"
    finally:
        server.stop()
