"""docs/ci/github-actions.yml: valid YAML of the shape GitHub runs (dev on push, prod behind
an environment approval, OIDC, known_hosts, --lock-wait, --json into the job summary), and
every `fab` command in it parses with fab's own parser against today's tasks."""
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / "docs" / "ci" / "github-actions.yml"


@pytest.fixture(scope="module")
def wf():
    return yaml.safe_load(WORKFLOW.read_text())


def steps(wf, job):
    return wf["jobs"][job]["steps"]


def runs(wf):
    return [s["run"] for job in wf["jobs"] for s in steps(wf, job) if "run" in s]


def fab_commands(wf) -> list[list[str]]:
    out = []
    for script in runs(wf):
        for line in script.splitlines():
            m = re.match(r"\s*(fab\s[^>|;&]*)", line)  # a command line of the script, up to a redirect
            if m:
                out.append(shlex.split(m.group(1)))
    return out


def test_shape(wf):
    triggers = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` as true
    assert triggers["push"]["branches"] == ["main"]
    assert wf["permissions"]["id-token"] == "write"
    dev, prod = wf["jobs"]["dev"], wf["jobs"]["prod"]
    assert dev["environment"] == "dev" and prod["environment"] == "prod" and prod["needs"] == "dev"
    for job in ("dev", "prod"):
        oidc = [s for s in steps(wf, job) if str(s.get("uses", "")).startswith("aws-actions/configure-aws-credentials")]
        assert oidc and "role-to-assume" in oidc[0]["with"] and "aws-access-key-id" not in oidc[0]["with"]
        text = "\n".join(s.get("run", "") for s in steps(wf, job))
        assert "known_hosts" in text and "ssh-keyscan" not in text.replace("never ssh-keyscan", "")
        assert "GITHUB_STEP_SUMMARY" in text
        summary = [s for s in steps(wf, job) if s.get("name") == "job summary"][0]
        assert summary["if"] == "always()"


def test_every_fab_command_parses(wf):
    from fabric.main import make_program

    cmds = fab_commands(wf)
    assert len(cmds) >= 3
    seen = set()
    for argv in cmds:
        p = make_program()
        full = ["fab", *argv[1:]]
        p.argv = full
        p.create_config()
        p.parse_core(full)
        p.parse_collection()
        p.parse_tasks()  # invoke.exceptions.ParseError on an unknown option or task
        (t,) = p.tasks
        given = {k for k, a in t.args.items() if a.got_value}
        seen.add(t.name)
        assert "inventory" in given and (REPO / "inventories" / f"{t.args['inventory'].value}.yaml").exists()
        assert "json" in given, argv
        if t.name == "deploy" and "dry-run" not in given:
            assert "lock-wait" in given, argv
            assert "accept-new-host-keys" not in given  # CI never trusts an unknown key
    assert seen == {"deploy"}


def test_the_summary_step_renders_a_real_document(wf, tmp_path, fab):
    if not shutil.which("jq"):
        pytest.skip("jq is not installed (GitHub's runners have it)")
    from tests.unit.test_exit_codes import _inv, closed_port

    r = fab("bootstrap", "-i", str(_inv(tmp_path, closed_port())), "--json")
    (tmp_path / "fabship.json").write_text(r.stdout)
    script = [s for s in steps(wf, "prod") if s.get("name") == "job summary"][0]["run"]
    summary = tmp_path / "summary.md"
    p = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                       env={**os.environ, "GITHUB_STEP_SUMMARY": str(summary)})
    assert p.returncode == 0, p.stderr
    text = summary.read_text()
    assert "unreachable (exit 4)" in text and "| gone | unreachable | - | - |" in text
    json.loads(r.stdout)


def test_short_options_resolve_as_the_readme_says(fab, tmp_path):
    """After the task name -i/-d are the task's (--inventory, --dry-run); before it they are
    fab's own (-i an identity file, which fabship never reads: keys come from ssh.key_file)."""
    from fabric.main import make_program

    p = make_program()
    argv = ["fab", "-i", "/nonexistent/identity", "deploy", "-i", "ota-dev", "-d"]
    p.argv = argv
    p.create_config()
    p.parse_core(argv)
    p.parse_collection()
    p.parse_tasks()
    (t,) = p.tasks
    assert t.args["inventory"].value == "ota-dev" and t.args["dry-run"].value is True
    assert p.core[0].args["identity"].value == ["/nonexistent/identity"]
    from tests.unit.test_exit_codes import _inv

    r = fab("-i", "/nonexistent/identity", "hosts", "-i", str(_inv(tmp_path, 22)), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["data"]["hosts"][0]["name"] == "gone"
