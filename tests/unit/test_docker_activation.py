"""tasks/release/activation.py's docker blue/green start, at the command level
(a FakeCtx answers every command): what it does with the containers a
killed deploy left behind."""
import pytest

from tasks.config.app import Layout
from tasks.facts.releases import HostState
from tasks.release import activation as act
from tasks.release.health import HealthSpec

from .fakectx import FakeCtx
from .localctx import load_inv

HEALTHY = "FABSHIP_HEALTH ok 1 200\n\n"


def _containers(*rows):
    return [{"name": n, "release": r, "port": p, "image": f"reg/app:{r}", "state": s} for n, r, p, s in rows]


@pytest.mark.parametrize("left,removed", [
    # a deploy killed after "start new container": its container runs on the idle port (docker's
    # restart policy brings it back at boot too) and would make `docker run -p` fail (exit 125)
    (_containers(("demo-R1", "R1", "3001", "running"), ("demo-R2", "R2", "3002", "running")), ["demo-R2"]),
    (_containers(("demo-R1", "R1", "3001", "running"), ("demo-R2", "R2", "3002", "exited")), ["demo-R2"]),
    # nothing on the idle port: nothing removed before the start
    (_containers(("demo-R1", "R1", "3001", "running")), []),
])
def test_a_container_left_on_the_idle_port_is_removed_before_the_new_one_starts(tmp_path, left, removed):
    inv = load_inv(tmp_path, {"app": {"kind": "docker", "port": 3000}, "deploy": {"source": "image"},
                              "docker": {"image": "reg/app"}})
    lay = Layout.from_inventory(inv)
    st = HostState(root_exists=True, current="R1", releases=["R1", "R2", "R3"], upstream_port=3001,
                   containers=left)
    ctx = FakeCtx(inv, answers={"FABSHIP_HEALTH": HEALTHY})
    act._docker(ctx, lay, st, "R3", "reg/app:R3", 0, HealthSpec(path="/health", retries=1), "R1")
    cmds = ctx.commands
    run_at = next(i for i, c in enumerate(cmds) if "docker run -d --name demo-R3" in c)
    assert "127.0.0.1:3002:" in cmds[run_at]
    before = "\n".join(cmds[:run_at])
    for name in removed:
        assert f"docker rm -f {name}" in before
    assert "docker rm -f demo-R1" not in before   # the live one serves until the switch
    if not removed:
        assert "docker stop" not in before
