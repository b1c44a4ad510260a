"""docker's --env-file takes values literally: for app.kind docker the env file is
written in that format, so a value with quotes, backslashes or edge spaces reaches
the container exactly as in the dotenv source, after bootstrap+deploy and after
rotate-env; a value with a line break is refused naming the key, nothing changed.
Runs on h3 with its own app name and port (image from the sandbox registry)."""
import json

import pytest
import yaml

from test_deploy_support import REPO, fab, must, out

HOST, APP, PORT = "h3", "dockenv", 8380
ODD = {"QUOTED": '"in quotes"', "BACKSLASH": "a\\b\\\\c", "SPACES": "  padded  ", "SINGLE": "'single'",
       "DOLLAR": "$HOME ${X}", "HASH": "x #not a comment"}


def container_env(fleet) -> dict:
    names = must(fleet, HOST, f"docker ps --filter label=fabship.app={APP} --format '{{{{.Names}}}}'").split()
    assert len(names) == 1, names
    env = json.loads(must(fleet, HOST, f"docker inspect -f '{{{{json .Config.Env}}}}' {names[0]}"))
    return dict(e.split("=", 1) for e in env)


@pytest.fixture
def images(sandbox_fleet):
    from tasks.sandbox.images import push_samples

    reg = (sandbox_fleet.services.get("registry") or {}).get("registry") or f"{sandbox_fleet.bridge_ip}:5000"
    push_samples(reg, "1.0.0")
    return reg


def test_values_reach_the_container_exactly(sandbox_fleet, images, tmp_path):
    fleet = sandbox_fleet
    fleet.run(HOST, f"docker rm -f $(docker ps -aq --filter label=fabship.app={APP}) 2>/dev/null; "
                    f"rm -rf /opt/{APP} /etc/{APP}; true")
    env = tmp_path / "app.env"
    # SINGLE holds a single quote: written double-quoted, its \ doubled for the parser
    first = dict(ODD, SERVER_PORT="8080")
    env.write_text("".join(f"{k}='{v}'\n" for k, v in first.items() if "'" not in v)
                   + "SINGLE=\"'single'\"\n")
    env.chmod(0o600)
    inv = tmp_path / "inv.yaml"
    inv.write_text(yaml.safe_dump({
        "include": [str(REPO / "inventories" / "sandbox.yaml")],
        "app": {"name": APP, "kind": "docker", "port": PORT},
        "nginx": {"enabled": False},
        "docker": {"image": "fabship/docker-service", "container_port": 8080},
        "deploy": {"source": "image", "strategy": "restart"},
        "health": {"path": "/actuator/health", "body_contains": '"status":"UP"', "retries": 20, "interval": 0.5},
        "env": {"source": {"type": "file", "file": str(env)}},
    }))
    r = fab("bootstrap", "-i", str(inv), "--limit", HOST, "--no-gate", timeout=1200)
    assert r.returncode == 0, out(r)[-4000:]
    r = fab("deploy", "-i", str(inv), "--limit", HOST, "--no-gate", "--tag", "1.0.0", timeout=900)
    assert r.returncode == 0, out(r)[-4000:]
    got = container_env(fleet)
    assert {k: got.get(k) for k in first} == first
    assert must(fleet, HOST, f"stat -c %U:%a /etc/{APP}/{APP}.env").strip() == "root:600"

    # rotate-env: new odd values, the container restarted with them, exactly
    second = dict(first, QUOTED='"new" quotes', SPACES=" lead")
    env.write_text("".join(f"{k}='{v}'\n" for k, v in second.items() if "'" not in v)
                   + "SINGLE=\"'single'\"\n")
    r = fab("rotate-env", "-i", str(inv), "--limit", HOST, "--no-gate", timeout=900)
    assert r.returncode == 0, out(r)[-4000:]
    got = container_env(fleet)
    assert {k: got.get(k) for k in second} == second
    assert must(fleet, HOST, f"ls /etc/{APP}/").split().count(f"{APP}.env.prev") == 1   # versioned

    # a value docker cannot carry: refused before connecting, naming the key, never the value
    sha = must(fleet, HOST, f"sha256sum < /etc/{APP}/{APP}.env")
    env.write_text("SERVER_PORT=8080\nPEM=\"line1\nCANARY-line2\"\n")
    r = fab("rotate-env", "-i", str(inv), "--limit", HOST, "--no-gate", timeout=300)
    assert r.returncode == 2 and "PEM" in out(r) and "line break" in out(r), out(r)[-2000:]
    assert "CANARY" not in out(r) and "Traceback" not in out(r)
    assert must(fleet, HOST, f"sha256sum < /etc/{APP}/{APP}.env") == sha
    fleet.run(HOST, f"docker rm -f $(docker ps -aq --filter label=fabship.app={APP}) 2>/dev/null; true")
