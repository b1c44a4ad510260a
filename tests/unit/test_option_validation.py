"""Every numeric option is checked before anything connects (issue 11): a bad
value is one line naming the option, exit 2, no traceback, nothing run."""
import pytest

BAD = [
    ("deploy", "--parallel", "abc"), ("deploy", "--parallel", "0"), ("deploy", "-p", "-2"),
    ("deploy", "--parallel", "2.5"), ("deploy", "--batch", "0"), ("deploy", "--batch", "0%"),
    ("deploy", "--batch", "abc"), ("deploy", "--batch", "150%"), ("deploy", "--max-fail", "-1"),
    ("deploy", "--max-fail", "x%"), ("deploy", "--lock-wait", "soon"), ("deploy", "--lock-wait", "-3"),
    ("rollback", "--lock-wait", "nan"), ("rollback", "--parallel", "0"), ("rotate-env", "--lock-wait", "inf"),
    ("rotate-env", "--parallel", "many"), ("releases", "--last", "abc"), ("releases", "--last", "0"),
    ("unlock", "--parallel", "0"), ("verify", "--parallel", "x"), ("diagnose", "--lines", "x"),
    ("diagnose", "--lines", "0"), ("bootstrap", "--parallel", "0"),
]


@pytest.fixture
def no_connect(monkeypatch):
    """Fail the test if anything tries to open a host connection."""
    import tasks.core.runner
    import tasks.core.ssh

    calls = []

    def refuse(*a, **k):
        calls.append(a)
        raise AssertionError("connected although an option was bad")

    monkeypatch.setattr(tasks.core.ssh, "connect", refuse)
    monkeypatch.setattr(tasks.core.runner.Run, "connect", refuse)
    return calls


@pytest.mark.parametrize("task,opt,value", BAD, ids=lambda x: str(x))
def test_bad_number_is_one_line_exit_2(fab, no_connect, task, opt, value):
    r = fab(task, "-i", "sandbox", f"{opt}={value}")
    assert r.returncode == 2, (r.stdout, r.stderr)
    out = r.stdout + r.stderr
    assert "Traceback" not in out and not no_connect
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    long_opt = {"-p": "--parallel"}.get(opt, opt)
    assert long_opt in lines[0] and value in lines[0], lines[0]
    assert r.stdout.strip() == ""  # nothing ran: no header, no summary


@pytest.mark.parametrize("task,args", [
    ("deploy", ["--parallel", "3", "--batch", "25%", "--max-fail", "0", "--lock-wait", "1.5"]),
    ("deploy", ["--batch", "2", "--max-fail", "50%"]),
    ("releases", ["--last", "3"]),
    ("diagnose", ["--lines", "50"]),
    ("rotate-env", ["--lock-wait", "0"]),
])
def test_good_numbers_pass_to_the_task(fab, tmp_path, task, args):
    # they get past the option check: the next thing that fails is the missing inventory
    r = fab(task, "-i", str(tmp_path / "none.yaml"), *args)
    assert r.returncode == 2 and "inventory file not found" in r.stderr, r.stderr
    assert "command line" not in r.stderr


def test_sandbox_count_is_not_a_traceback(fab):
    # an INT option of a task outside this list still never shows int()'s traceback
    from tasks.cli.base import BadNumber, check_numbers
    from tasks.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"--count: expected a whole number"):
        check_numbers({"count": BadNumber("lots")})
