"""Exit codes CI can act on (README "Exit codes"): 0 ok, 1 host failure, 2 configuration
error, 3 lock held, 4 unreachable (no other failure), 130/143 interrupted."""
import socket

import pytest
from invoke import Context
from invoke.exceptions import Exit

from tasks.cli.base import fabship_task
from tasks.config.inventory import load_inventory
from tasks.core import output
from tasks.core.errors import ConnectError, LockError, StepFailed
from tasks.core.runner import Output, Run
from tests.unit.test_runner import fleet  # noqa: F401  (three in-process SSH servers)


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connection refused
    return port


def test_the_table():
    assert output.exit_code_for([]) == 0
    assert output.exit_code_for(["failed"]) == 1
    assert output.exit_code_for(["lock_held"]) == 3
    assert output.exit_code_for(["unreachable"]) == 4
    # the most severe reason wins: a failure beats a held lock beats an unreachable host
    assert output.exit_code_for(["unreachable", "failed"]) == 1
    assert output.exit_code_for(["unreachable", "lock_held"]) == 3
    assert output.exit_code_for(["failed", "interrupted"]) == 130
    assert [output.result_of(c) for c in (0, 1, 2, 3, 4, 130, 143)] == [
        "ok", "failed", "config_error", "lock_held", "unreachable", "interrupted", "interrupted"]


def _run(inv, tmp_path):
    import io

    return Run("test", inv, inv.resolve_hosts(), out=Output(stream=io.StringIO()))


def test_run_codes_from_what_the_hosts_failed_of(fleet, tmp_path):  # noqa: F811
    inv, _servers = fleet
    names = [h.name for h in inv.resolve_hosts()]

    def with_failures(failures: dict) -> int:
        run = _run(inv, tmp_path)

        def fn(ctx):
            e = failures.get(ctx.host.name)
            if e is not None:
                raise e
            ctx.run("true")

        run.each(fn)
        return run.finish()

    assert with_failures({}) == 0
    assert with_failures({names[0]: StepFailed("build failed")}) == 1
    assert with_failures({names[0]: LockError("lock held by x")}) == 3
    assert with_failures({names[0]: ConnectError("no route")}) == 4
    assert with_failures({names[0]: ConnectError("no route"), names[1]: StepFailed("x")}) == 1
    assert with_failures({names[0]: ConnectError("no route"), names[1]: LockError("held")}) == 3


def test_a_link_lost_after_connecting_is_a_failure_not_unreachable(fleet, tmp_path):  # noqa: F811
    inv, _servers = fleet
    run = _run(inv, tmp_path)
    victim = run.hosts[0].name

    def fn(ctx):
        ctx.run("true")
        if ctx.host.name == victim:
            raise ConnectError("127.0.0.1: connection lost")

    run.each(fn)
    assert run.ctx(run.hosts[0]).outcome() == "unreachable"  # the summary's word stays
    assert run.finish() == 1


def _inv(tmp_path, port):
    p = tmp_path / "inv.yaml"
    p.write_text(f"hosts: {{static: {{gone: {{address: 127.0.0.1, port: {port}}}}}}}\n"
                 f"ssh: {{user: root, known_hosts: {tmp_path}/kh, connect_timeout: 3}}\n"
                 "app: {name: demo, kind: node, port: 3000, start: npm start}\n"
                 "deploy: {source: artifact}\n")
    return p


@pytest.mark.parametrize("task", ["bootstrap", "deploy", "verify", "releases", "diagnose", "unlock"])
def test_unreachable_host_exits_4(fab, tmp_path, task):
    r = fab(task, "-i", str(_inv(tmp_path, closed_port())), *(["--artifact", str(tmp_path)] if task == "deploy" else []))
    assert r.returncode == 4, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr


def test_configuration_and_usage_errors_exit_2(fab, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("hosts: {static: [a]}\nssh: {prot: 22}\n")
    assert fab("deploy", "-i", str(bad)).returncode == 2
    assert fab("deploy", "-i", str(_inv(tmp_path, 22)), "--parallel", "0").returncode == 2
    assert fab("hosts", "-i", str(tmp_path / "missing.yaml")).returncode == 2


def test_interrupt_and_terminate_exit_130_and_143():
    from tasks.cli.base import Terminated

    @fabship_task(help={})
    def boom(c, what="int"):
        raise KeyboardInterrupt() if what == "int" else Terminated()

    with pytest.raises(Exit) as e:
        boom.body(Context(), what="int")
    assert e.value.code == 130
    with pytest.raises(Exit) as e:
        boom.body(Context(), what="term")
    assert e.value.code == 143


def test_error_classes_carry_their_codes():
    from tasks.core.errors import ConfigError, FabshipError, HostKeyError

    assert FabshipError("x").exit_code == 1
    assert ConfigError("f", "k", "p").exit_code == 2
    assert LockError("x").exit_code == 3
    assert ConnectError("x").exit_code == 4 and HostKeyError("x").exit_code == 4
