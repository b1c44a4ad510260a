"""`--json`: one JSON document on stdout at the end (format fabship.run), human output
on stderr, no secret; the run record has the same schema plus local-only keys."""
import io
import json

import pytest

from tasks.core import output
from tasks.core.commands import Secret, sh
from tasks.core.errors import StepFailed
from tasks.core.runner import Output, Run
from tests.unit.test_exit_codes import _inv, closed_port
from tests.unit.test_runner import fleet  # noqa: F401

TOP = {"format", "version", "task", "inventory", "inventory_files", "started", "duration", "dry_run",
       "exit_code", "result", "message", "hosts", "releases", "failures", "extra", "data"}
HOST = {"address", "result", "reason", "changed", "duration", "failures", "error", "steps", "note",
        "release_before", "release_after"}


def one_document(stdout: str) -> dict:
    doc = json.loads(stdout)  # the whole of stdout is one document
    assert doc["format"] == "fabship.run" and doc["version"] == output.JSON_VERSION
    assert TOP <= set(doc), set(doc) ^ TOP
    return doc


def records(tmp_path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((tmp_path / "runs").glob("*.json"))]


def test_unreachable_run(fab, tmp_path):
    r = fab("bootstrap", "-i", str(_inv(tmp_path, closed_port())), "--json")
    assert r.returncode == 4
    doc = one_document(r.stdout)
    assert (doc["task"], doc["exit_code"], doc["result"]) == ("bootstrap", 4, "unreachable")
    assert doc["message"] == "fabship: bootstrap failed on: gone"
    h = doc["hosts"]["gone"]
    assert HOST <= set(h) and h["reason"] == "unreachable" and "cannot connect" in h["error"]
    assert doc["failures"] == [{"host": "gone", "step": None, "reason": "unreachable", "message": h["error"]}]
    # the human output went to stderr: the summary table and the closing line
    assert "UNREACHABLE" in r.stderr and "fabship: bootstrap failed on: gone" in r.stderr
    # the run record: the same document plus what stays local
    (rec,) = records(tmp_path)
    assert TOP - {"data"} <= set(rec) and {"options", "control_host", "user"} <= set(rec)
    assert rec["exit_code"] == 4 and rec["result"] == "unreachable"
    assert HOST | {"commands", "details", "remote_commands"} <= set(rec["hosts"]["gone"])


def test_configuration_error(fab, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("hosts: {static: [a]}\nssh: {prot: 22}\n")
    r = fab("deploy", "-i", str(bad), "--json")
    assert r.returncode == 2
    doc = one_document(r.stdout)
    assert (doc["task"], doc["exit_code"], doc["result"]) == ("deploy", 2, "config_error")
    assert str(bad) in doc["message"] and "ssh.prot: unknown key" in doc["message"]
    assert doc["hosts"] == {} and doc["inventory"] is None
    assert len([ln for ln in r.stderr.splitlines() if ln.strip()]) == 1  # still one line, no traceback


def test_success_of_a_task_without_hosts_to_connect(fab, tmp_path):
    r = fab("hosts", "-i", str(_inv(tmp_path, 2222)), "--json")
    assert r.returncode == 0, r.stderr
    doc = one_document(r.stdout)
    assert (doc["exit_code"], doc["result"], doc["message"]) == (0, "ok", None)
    (h,) = doc["data"]["hosts"]
    assert h.pop("source").startswith("static")
    assert h == {"name": "gone", "address": "127.0.0.1", "user": "root", "port": 2222, "groups": [], "tags": {}}
    assert "NAME" in r.stderr and "gone" in r.stderr  # the table, for a human reading the job log


def test_without_json_stdout_keeps_the_human_output(fab, tmp_path):
    r = fab("hosts", "-i", str(_inv(tmp_path, 2222)))
    assert r.returncode == 0 and "NAME" in r.stdout
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.stdout)


def test_the_real_program_writes_nothing_else_to_stdout(fab, tmp_path):
    """fd 1 itself is pointed at stderr while the task runs (a subprocess writing to it too)."""
    r = fab("bootstrap", "-i", str(_inv(tmp_path, closed_port())), "--json", subprocess=True)
    assert r.returncode == 4, r.stderr
    assert one_document(r.stdout)["result"] == "unreachable"
    assert "UNREACHABLE" in r.stderr


def test_steps_results_and_secrets(fleet, tmp_path):  # noqa: F811
    inv, _servers = fleet
    run = Run("deploy", inv, inv.resolve_hosts(), out=Output(stream=io.StringIO()))
    token = Secret("tok-3141592653")
    run.add_secrets([token])
    bad = run.hosts[1].name

    def fn(ctx):
        ctx.data["previous"] = "20250101T000000Z-v1"
        ctx.ok("facts")
        ctx.change("switch", "switched", sh("true"))
        if ctx.host.name == bad:
            raise StepFailed(f"health: the app said tok-3141592653 is wrong ({token})")

    run.each(fn)
    run.extra["serving"] = {h.name: ("20250101T000000Z-v1" if h.name == bad else "20250102T000000Z-v2")
                            for h in run.hosts}
    col = output.Collector("deploy")
    col.runs.append(run)
    text = output.dumps(output.document(col, run.finish(), "fabship: deploy failed on: " + bad), run.secrets)
    assert "tok-3141592653" not in text
    doc = json.loads(text)
    assert doc["exit_code"] == 1 and doc["result"] == "failed"
    h = doc["hosts"][bad]
    assert [s["name"] for s in h["steps"]] == ["facts", "switch"]
    assert all(isinstance(s["duration"], float) and s["status"] in ("ok", "changed") for s in h["steps"])
    assert h["reason"] == "failed" and "***" in h["error"]
    assert doc["releases"]["before"][bad] == "20250101T000000Z-v1"
    good = run.hosts[0].name
    assert doc["releases"]["after"][good] == "20250102T000000Z-v2" and doc["hosts"][good]["reason"] is None
    assert [f["host"] for f in doc["failures"]] == [bad]
