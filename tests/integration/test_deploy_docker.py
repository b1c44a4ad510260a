"""Docker deploys on real hosts (images from the sandbox registry, built by
tasks/sandbox/images.py): image blue/green behind nginx on h4, image restart without
nginx on h3, compose on h5. Each: deploy A, then B, then a broken image
(its health says DOWN) -> B keeps serving with docker logs in the report;
rollback -> A; the release log records the image and the previous image."""
import json

import pytest
import yaml

from test_deploy_support import REPO, address, fab, http_get, lock_exists, must, out, release_log

TAGS = ("1.0.0", "2.0.0")
BROKEN = "3.0.0-broken"


@pytest.fixture(scope="module")
def images(sandbox_fleet):
    from tasks.sandbox.images import push_samples

    reg = (sandbox_fleet.services.get("registry") or {}).get("registry") or f"{sandbox_fleet.bridge_ip}:5000"
    for t in TAGS:
        push_samples(reg, t)
    push_samples(reg, BROKEN, broken=True)
    return reg


def write(tmp_path, name, data) -> str:
    p = tmp_path / f"{name}.yaml"
    env = tmp_path / f"{name}.env"
    env.write_text("SPRING_PROFILES_ACTIVE=sandbox\nSERVER_PORT=8080\n")
    env.chmod(0o600)
    base = {"include": [str(REPO / "inventories" / "sandbox.yaml")],
            "env": {"source": {"type": "file", "file": str(env)}}}
    base.update(data)
    p.write_text(yaml.safe_dump(base))
    return str(p)


def info_version(fleet, host, port=None, vhost=None, path="/actuator/info"):
    """Through nginx (vhost) or the published port."""
    addr = address(fleet, host) + (f":{port}" if port else "")
    status, body = http_get(addr, path, vhost)
    assert status == 200, f"{host}: {status} {body[:300]}"
    return json.loads(body)["app"]["version"] if path == "/actuator/info" else json.loads(body)["version"]


def containers(fleet, host, app):
    rc, o, _ = fleet.run(host, f"docker ps --filter label=fabship.app={app} --format '{{{{.Names}}}} {{{{.Image}}}}'")
    return [ln for ln in o.splitlines() if ln.strip()]


def _cycle(fleet, inv, host, app, version_of):
    def deploy(tag):
        return fab("deploy", "-i", inv, "--limit", host, "--no-gate", "--tag", tag, timeout=900)

    for t in TAGS:
        r = deploy(t)
        assert r.returncode == 0, out(r)[-4000:]
        assert version_of() == t
    r = deploy(BROKEN)
    assert r.returncode != 0
    text = out(r)
    assert "failed its health check" in text and "last health response" in text and "DOWN" in text
    assert version_of() == TAGS[1]
    log = release_log(fleet, host, app)
    # image: registry/name:TAG (docker) or TAGVAR=TAG (compose)
    assert log[-1]["result"] == "failed" and log[-1]["image"].endswith(BROKEN)
    ok = [e for e in log if e["result"] == "ok"]
    assert ok[-1]["image"].endswith(TAGS[1]) and ok[-1]["previous_image"].endswith(TAGS[0])
    assert not lock_exists(fleet, host, app)
    r = fab("rollback", "-i", inv, "--limit", host, "--no-gate")
    assert r.returncode == 0, out(r)[-4000:]
    assert version_of() == TAGS[0]
    return text


def test_image_blue_green_behind_nginx(sandbox_fleet, images, tmp_path):
    host, app = "h4", "dockbg"
    sandbox_fleet.run(host, f"docker rm -f $(docker ps -aq --filter label=fabship.app={app}) 2>/dev/null; "
                            f"rm -rf /opt/{app}; true")
    inv = write(tmp_path, app, {
        "app": {"name": app, "kind": "docker", "port": 8180},
        "nginx": {"server_name": f"{app}.{{host}}.sandbox.test"},
        "docker": {"image": "fabship/docker-service", "container_port": 8080},
        "deploy": {"source": "image"},
        "health": {"path": "/actuator/health", "body_contains": '"status":"UP"', "retries": 10, "interval": 0.5},
    })
    r = fab("bootstrap", "-i", inv, "--limit", host, "--no-gate", timeout=1200)
    assert r.returncode == 0, out(r)[-4000:]
    vhost = f"{app}.{host}.sandbox.test"
    text = _cycle(sandbox_fleet, inv, host, app, lambda: info_version(sandbox_fleet, host, vhost=vhost))
    assert f"docker logs {app}-" in text
    running = containers(sandbox_fleet, host, app)
    assert len(running) == 1 and running[0].endswith(f":{TAGS[0]}"), running
    # the env file reached the container (docker run --env-file)
    name = running[0].split()[0]
    assert "SERVER_PORT=8080" in must(sandbox_fleet, host, f"docker inspect -f '{{{{.Config.Env}}}}' {name}").replace(
        " ", "\n")


def test_image_restart_without_nginx(sandbox_fleet, images, tmp_path):
    host, app = "h3", "dockrs"
    sandbox_fleet.run(host, f"docker rm -f $(docker ps -aq --filter label=fabship.app={app}) 2>/dev/null; "
                            f"rm -rf /opt/{app}; true")
    inv = write(tmp_path, app, {
        "app": {"name": app, "kind": "docker", "port": 8280},
        "nginx": {"enabled": False},
        "docker": {"image": "fabship/docker-service", "container_port": 8080},
        "deploy": {"source": "image", "strategy": "restart"},
        "health": {"path": "/actuator/health", "body_contains": '"status":"UP"', "retries": 6, "interval": 0.5},
    })
    r = fab("bootstrap", "-i", inv, "--limit", host, "--no-gate", timeout=1200)
    assert r.returncode == 0, out(r)[-4000:]
    text = _cycle(sandbox_fleet, inv, host, app, lambda: info_version(sandbox_fleet, host, port=8280))
    assert "the old container is serving again" in text


def test_compose(sandbox_fleet, images, tmp_path):
    host, app = "h5", "shopdemo"
    sandbox_fleet.run(host, f"cd / && docker-compose -p {app} down 2>/dev/null; docker compose -p {app} down "
                            f"2>/dev/null; rm -rf /opt/{app}; true")
    compose = tmp_path / "stack.yml"
    compose.write_text(f"""version: "2.4"
services:
  db:
    image: {images}/fabship/compose-db:${{API_TAG}}
    restart: unless-stopped
  api:
    image: {images}/fabship/compose-api:${{API_TAG}}
    restart: unless-stopped
    env_file: /etc/{app}/{app}.env
    environment: {{DB_HOST: db, DB_PORT: "5432"}}
    ports: ["8380:8080"]
    depends_on: [db]
""")
    inv = write(tmp_path, app, {
        "app": {"name": app, "kind": "compose", "port": 8380},
        "nginx": {"server_name": f"{app}.{{host}}.sandbox.test"},
        "docker": {"compose_file": str(compose), "compose_tag_vars": ["API_TAG"]},
        "deploy": {"source": "compose"},
        "health": {"path": "/api/v1/health", "body_contains": '"db":"UP"', "retries": 20, "interval": 0.5},
    })
    r = fab("bootstrap", "-i", inv, "--limit", host, "--no-gate", timeout=1200)
    assert r.returncode == 0, out(r)[-4000:]
    _cycle(sandbox_fleet, inv, host, app,
           lambda: info_version(sandbox_fleet, host, port=8380, path="/api/v1/version"))
