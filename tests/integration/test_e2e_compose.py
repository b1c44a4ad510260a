"""System 3 end to end on h8: the docker compose stack (api, client, db
stand-in; sample images) with inventories/sandbox-compose.yaml: compose pull,
then up -d; /api/v1/health including the database; a broken release rolled
back to the previous image tags; rotate-env, rollback, verify."""
import json

from test_e2e_support import INV, Flow, env_file, h8, push_samples, require_docker  # noqa: F401

APP = "shopfront"
ENV_PATH = f"/etc/{APP}/{APP}.env"
SAMPLE_ENV = INV / "sandbox-env" / "compose.env"


def services(f: Flow) -> dict:
    """compose service -> (image, running) of the project's containers."""
    ids = f.must(f"docker ps -aq --filter label=com.docker.compose.project={APP}").split()
    out = {}
    for c in json.loads(f.must(f"docker inspect {' '.join(ids)}")) if ids else []:
        out[c["Config"]["Labels"]["com.docker.compose.service"]] = (c["Config"]["Image"], c["State"]["Running"], c)
    return out


def tags(f: Flow) -> dict:
    return {s: img.rsplit(":", 1)[1] for s, (img, running, _) in services(f).items() if running}


def health(f: Flow) -> tuple[int, dict]:
    status, _, body = f.http("http://127.0.0.1:8080/api/v1/health")
    return status, (json.loads(body) if body.strip().startswith("{") else {})


def test_compose_stack_end_to_end(h8, tmp_path):  # noqa: F811
    require_docker(h8)
    for tag in ("1.0.0", "2.0.0"):
        push_samples(h8, tag)
    push_samples(h8, "3.0.0-broken", broken=True)
    f = Flow(h8, tmp_path, "sandbox-compose")

    f.fab("bootstrap")
    f.must("systemctl is-active -q docker && (docker-compose version || docker compose version) >/dev/null")
    assert f.stat(ENV_PATH) == f"root:{APP}:600"
    f.fab("bootstrap")
    assert f.changed_steps("bootstrap") == [], "a second bootstrap changed something"

    f.fab("deploy", "--tag", "1.0.0")
    assert tags(f) == {"api": "1.0.0", "client": "1.0.0", "db": "1.0.0"}
    status, body = health(f)
    assert status == 200 and body.get("db") == "UP", body
    assert f.http("http://127.0.0.1:3000/")[0] == 200
    # the health check includes the database: without it the API is DOWN
    db = services(f)["db"][2]["Name"].lstrip("/")
    f.must(f"docker stop {db} >/dev/null")
    try:
        f.wait_for("api reports the database down", lambda: health(f)[0] == 503 and health(f)[1].get("db") == "DOWN")
    finally:
        f.must(f"docker start {db} >/dev/null")
    f.wait_for("api healthy again", lambda: health(f)[0] == 200)

    f.fab("deploy", "--tag", "2.0.0")
    assert tags(f) == {"api": "2.0.0", "client": "2.0.0", "db": "2.0.0"}

    r = f.fab("deploy", "--tag", "3.0.0-broken", "--set", "health.retries=5", expect=1)
    assert "health" in (r.stdout + r.stderr).lower()
    assert tags(f) == {"api": "2.0.0", "client": "2.0.0", "db": "2.0.0"}, "not back on the previous tags"
    assert health(f)[0] == 200

    new_pw = "rotated-db-password-42"
    r = f.fab("rotate-env", "--env-file", str(env_file(tmp_path, SAMPLE_ENV, "new.env", POSTGRES_PASSWORD=new_pw)))
    assert new_pw not in r.stdout + r.stderr
    assert f"POSTGRES_PASSWORD={new_pw}" in services(f)["api"][2]["Config"]["Env"]
    assert health(f)[0] == 200

    f.fab("rollback")
    assert tags(f) == {"api": "1.0.0", "client": "1.0.0", "db": "1.0.0"}
    assert health(f)[0] == 200

    r = f.fab("verify")
    assert f.host_result("verify")["result"] in ("ok", "passed"), r.stdout
    assert "api_version" in r.stdout
