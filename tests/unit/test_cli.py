"""The fab command line as a user meets it (fabric's program, no hosts)."""
import re

import boto3
import pytest

REQUIRED = ["bootstrap", "deploy", "rotate-env", "rollback", "verify", "releases", "hosts"]


def test_list_shows_every_task(fab):
    r = fab("--list", subprocess=True)  # the real `python -m fabric`, once
    assert r.returncode == 0, r.stderr
    names = {line.split()[0] for line in r.stdout.splitlines()[1:] if line.strip()
             and line.startswith("  ") and not line.startswith("    ")}
    for name in REQUIRED + ["diagnose", "unlock"]:
        assert name in names, r.stdout


@pytest.mark.parametrize("task", REQUIRED + ["diagnose", "unlock"])
def test_help_explains_every_option(fab, task):
    r = fab("--help", task)
    assert r.returncode == 0, r.stderr
    opts = r.stdout.split("Options:")[1]
    entries = re.split(r"\n  (?=-)", "\n" + opts.strip("\n"))
    entries = [e for e in entries if e.strip()]
    assert entries
    for e in entries:
        flag, _, text = e.strip().partition("  ")
        assert text.strip(), f"option without help in `fab --help {task}`: {flag}"
    assert "--inventory" in opts


BAD = {
    "malformed.yaml": ("hosts:\n  static: [a\n", "invalid YAML"),
    "unknown.yaml": ("hosts: {static: [a]}\nssh: {prot: 22}\n", "ssh.prot: unknown key"),
    "type.yaml": ("hosts: {static: [a]}\nssh: {port: many}\n", "ssh.port: expected an integer"),
    "region.yaml": ("hosts: {ec2: {filters: {'tag:Name': x}}}\n", "hosts.ec2.region: required"),
    "toplevel.yaml": ("- a\n- b\n", "expected a mapping"),
    "empty.yaml": ("", "hosts: required key is missing"),
}


@pytest.mark.parametrize("name", sorted(BAD))
@pytest.mark.parametrize("task", ["hosts", "bootstrap", "deploy"])
def test_bad_inventory_one_line_no_traceback(fab, tmp_path, name, task):
    text, expected = BAD[name]
    p = tmp_path / name
    p.write_text(text)
    r = fab(task, "--inventory", str(p))
    assert r.returncode != 0
    assert "Traceback" not in r.stderr + r.stdout
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert str(p) in lines[0] and expected in lines[0]


def test_unreadable_key_file_is_refused_before_connecting(fab, tmp_path):
    p = tmp_path / "inv.yaml"
    p.write_text(f"hosts: {{static: [127.0.0.1]}}\nssh: {{key_file: {tmp_path}/missing-key}}\n")
    r = fab("deploy", "--inventory", str(p))
    # deploy may not be implemented yet; either way the inventory/key check comes first or
    # the task refuses clearly. `hosts` does not read keys; run a connecting task through open_run:
    from tasks.cli.base import RunOptions, open_run
    from tasks.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"ssh.key_file: cannot read .*missing-key"):
        open_run("test", RunOptions(inventory=str(p)))
    assert "Traceback" not in r.stderr


def test_missing_inventory_name(fab):
    r = fab("hosts", "--inventory", "no-such-inventory")
    assert r.returncode == 2
    assert "inventory 'no-such-inventory' not found" in r.stderr
    assert "Traceback" not in r.stderr


def test_hosts_from_moto(fab, tmp_path, moto_server, aws_env):
    ec2 = boto3.client("ec2", region_name="us-west-2", endpoint_url=moto_server)
    ec2.run_instances(ImageId="ami-12345678", MinCount=2, MaxCount=2, TagSpecifications=[{
        "ResourceType": "instance", "Tags": [{"Key": "Name", "Value": "cli-web"}, {"Key": "Env", "Value": "dev"}]}])
    stopped = ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1, TagSpecifications=[{
        "ResourceType": "instance", "Tags": [{"Key": "Name", "Value": "cli-web"}]}])["Instances"][0]
    ec2.stop_instances(InstanceIds=[stopped["InstanceId"]])
    p = tmp_path / "ec2.yaml"
    p.write_text("hosts:\n  ec2:\n    region: us-west-2\n    filters: {'tag:Name': cli-web}\n"
                 "    address: public_ip\nssh: {user: ec2-user}\n")
    r = fab("hosts", "--inventory", str(p), env={**aws_env, "AWS_ENDPOINT_URL": moto_server})
    assert r.returncode == 0, r.stderr
    rows = [ln for ln in r.stdout.splitlines() if "ec2 us-west-2" in ln]
    assert len(rows) == 2
    assert stopped["InstanceId"] not in r.stdout
    assert all("ec2-user" in row and "Env=dev" in row for row in rows)


def test_hosts_empty_ec2_match(fab, tmp_path, moto_server, aws_env):
    p = tmp_path / "ec2.yaml"
    p.write_text("hosts:\n  ec2:\n    region: us-west-2\n    filters: {'tag:Name': nobody-home}\n")
    r = fab("hosts", "--inventory", str(p), env={**aws_env, "AWS_ENDPOINT_URL": moto_server})
    assert r.returncode != 0
    assert "no instances in us-west-2 match tag:Name=nobody-home" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_dying_library_thread_is_one_line_not_a_traceback(capsys, monkeypatch):
    """invoke's timeout timer or paramiko's transport thread may raise in its own
    thread; the user sees one line naming it, not a traceback."""
    import threading

    from tasks.cli.base import fabship_task

    monkeypatch.delenv("FABSHIP_DEBUG", raising=False)

    @fabship_task(help={})
    def demo(c):
        def boom():
            raise EOFError("transport closed")

        t = threading.Thread(target=boom, name="Timer-7")
        t.start()
        t.join()

    before = threading.excepthook
    demo.body(None)
    err = capsys.readouterr().err
    assert err.strip() == ("fabship: background thread Timer-7 failed: EOFError: transport closed "
                           "(FABSHIP_DEBUG=1 shows the traceback)"), err
    assert threading.excepthook is before  # restored after the task


def test_hosts_says_which_jump_host(fab, tmp_path):
    p = tmp_path / "inv.yaml"
    p.write_text("hosts: {static: {web1: 10.0.1.5}}\nssh: {user: ec2-user}\n")
    r = fab("hosts", "-i", str(p), "--set", "ssh.jump_host=bastion.example.com:2222")
    assert r.returncode == 0, r.stderr
    assert "reached through jump host ec2-user@bastion.example.com:2222" in r.stdout.splitlines()[0], r.stdout


# -- -v is a counted flag: the help and the parser agree (issue 11) ---------------------------

def test_help_shows_verbose_as_a_flag_without_a_value(fab):
    for task in ("deploy", "rotate-env", "unlock", "verify"):
        r = fab("--help", task)
        assert r.returncode == 0, r.stderr
        line = next(ln for ln in r.stdout.splitlines() if "--verbose" in ln)
        assert re.match(r"\s*-v, --verbose\s{2,}", line), line
        assert "INT" not in line and "repeatable" in r.stdout


@pytest.mark.parametrize("args,level", [
    ([], 0), (["-v"], 1), (["-vv"], 2), (["-v", "-v"], 2), (["--verbose"], 1),
    (["--verbose", "--verbose"], 2), (["-vvv"], 3), (["-v", "--force"], 1),
])
def test_verbose_forms_reach_the_task(fab, monkeypatch, args, level):
    import tasks.cli.unlock

    seen = {}
    monkeypatch.setattr(tasks.cli.unlock, "unlock", lambda opts, **k: seen.update(verbose=opts.verbose, force=k["force"]))
    r = fab("unlock", "-i", "sandbox", *args)
    assert r.returncode == 0, r.stderr
    assert seen["verbose"] == level and isinstance(seen["verbose"], int)
    assert seen["force"] == ("--force" in args)


@pytest.mark.parametrize("args", [["--verbose=2"], ["-v", "1"]])
def test_verbose_with_a_value_is_refused(fab, monkeypatch, args):
    import tasks.cli.unlock

    called = []
    monkeypatch.setattr(tasks.cli.unlock, "unlock", lambda *a, **k: called.append(a))
    r = fab("unlock", "-i", "sandbox", *args)
    assert r.returncode != 0 and not called
    assert "Traceback" not in r.stderr + r.stdout
