"""System 2 end to end on h8: the Spring-Boot-style Docker service (sample
image fabship/docker-service) with inventories/sandbox-springsvc.yaml:
secrets dir 0700 with 0400 files, certificates 0444 mounted read-only, a
0600 .env passed as --env-file, port 8080, restart unless-stopped,
/actuator/health with N attempts and rollback to the previous image tag."""
import json

from test_e2e_support import INV, Flow, env_file, h8, push_samples, require_docker  # noqa: F401

APP = "ledgerly-api"
ENV_PATH = f"/opt/{APP}/.env"
SAMPLE_ENV = INV / "sandbox-env" / "springsvc.env"


def container(f: Flow) -> dict:
    names = f.must(f"docker ps --filter label=fabship.app={APP} --format '{{{{.Names}}}}'").split()
    assert len(names) == 1, f"expected one running container of {APP}, got {names}"
    return json.loads(f.must(f"docker inspect {names[0]}"))[0]


def version(f: Flow) -> str:
    status, _, body = f.http("http://127.0.0.1:8080/version")
    assert status == 200, f"/version: {status} {body[:200]}"
    return body.strip()


def test_spring_style_service_end_to_end(h8, tmp_path):  # noqa: F811
    require_docker(h8)
    for tag in ("1.0.0", "2.0.0"):
        push_samples(h8, tag)
    push_samples(h8, "3.0.0-broken", broken=True)
    f = Flow(h8, tmp_path, "sandbox-springsvc")

    f.fab("bootstrap")
    f.must("systemctl is-active -q docker")
    missing = f.sh(f"test -d /opt/{APP}/secrets && test -d /opt/{APP}/certs")[0]
    assert missing == 0, ("bootstrap did not create docker.secrets_dir / docker.certs_dir with the files of "
                          "docker.secret_files / docker.cert_files (inventories/sandbox-springsvc.yaml)")
    assert f.stat(f"/opt/{APP}/secrets") == "root:root:700"
    assert f.stat(f"/opt/{APP}/secrets/db-password") == "root:root:400"
    assert f.stat(f"/opt/{APP}/certs/db-ca.pem").endswith(":444")
    assert f.stat(ENV_PATH).endswith(":600")
    f.fab("bootstrap")
    assert f.changed_steps("bootstrap") == [], "a second bootstrap changed something"

    f.fab("deploy", "--tag", "1.0.0")
    c = container(f)
    assert c["Config"]["Image"].endswith("fabship/docker-service:1.0.0")
    assert c["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    assert any(p.get("HostPort") == "8080" for p in c["HostConfig"]["PortBindings"]["8080/tcp"])
    mounts = {m["Destination"]: m for m in c["Mounts"]}
    assert mounts["/run/secrets"]["RW"] is False and mounts["/certs"]["RW"] is False
    assert "SPRING_PROFILES_ACTIVE=sandbox" in c["Config"]["Env"]  # from --env-file
    status, _, body = f.http("http://127.0.0.1:8080/actuator/health")
    assert status == 200 and json.loads(body)["status"] == "UP"
    info = json.loads(f.http("http://127.0.0.1:8080/actuator/info")[2])
    assert info["secrets"] == "present" and info["certs"] == "present", info
    assert version(f) == "1.0.0"

    f.fab("deploy", "--tag", "2.0.0")
    assert version(f) == "2.0.0" and container(f)["Config"]["Image"].endswith(":2.0.0")

    # a broken image: health fails after N attempts, the previous tag serves again
    r = f.fab("deploy", "--tag", "3.0.0-broken", "--set", "health.retries=5", expect=1)
    assert "health" in (r.stdout + r.stderr).lower()
    assert version(f) == "2.0.0" and container(f)["Config"]["Image"].endswith(":2.0.0")

    r = f.fab("rotate-env", "--env-file",
              str(env_file(tmp_path, SAMPLE_ENV, "new.env", SPRING_PROFILES_ACTIVE="rotated")))
    assert "SPRING_PROFILES_ACTIVE" in r.stdout
    assert "SPRING_PROFILES_ACTIVE=rotated" in container(f)["Config"]["Env"]
    assert f.stat(ENV_PATH).endswith(":600") and version(f) == "2.0.0"

    f.fab("rollback")
    assert version(f) == "1.0.0" and container(f)["Config"]["Image"].endswith(":1.0.0")

    r = f.fab("verify")
    assert f.host_result("verify")["result"] in ("ok", "passed"), r.stdout
    assert "actuator_info" in r.stdout
