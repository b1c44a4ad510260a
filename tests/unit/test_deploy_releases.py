"""tasks/release/releases.py: ids, the release log, keep-N, rollback targets, exact
command builders, and the switch/shared/log scripts run locally."""
import json
import os
import subprocess
from datetime import datetime, timezone

import pytest

from tasks.release.releases import append_lines_script, delete_releases, link_shared, point_slot, release_id, releases_to_delete, rollback_target, switch_current, switch_symlink
from tasks.facts.releases import Entry, is_release_id, parse_log, parse_state, state_script
from tasks.config.app import Layout

LAY = Layout(app="web", kind="node", user="web", group="web", root="/opt/web", config_dir="/etc/web",
             env_path="/etc/web/web.env", strategy="blue_green", port=3000, ports=(3001, 3002), nginx=True)
R = [f"2025010{i}T000000Z-v{i}" for i in range(1, 8)]


def sh(cmd, stdin=b""):
    return subprocess.run(["sh", "-c", cmd.render()], input=stdin, capture_output=True)


def ok(rid, action="deploy", result="ok", **kw):
    return Entry(id=rid, action=action, result=result, **kw)


def test_release_id():
    now = datetime(2025, 3, 4, 5, 6, 7, tzinfo=timezone.utc)
    assert release_id("v2", now) == "20250304T050607Z-v2"
    assert release_id("feature/x y", now) == "20250304T050607Z-feature-x-y"
    assert release_id("../../etc", now) == "20250304T050607Z-etc"
    assert is_release_id("20250304T050607Z-v2")
    for bad in ("", "current", "../x", "20250304T050607Z-", "20250304T050607Z-a/b"):
        assert not is_release_id(bad)


def test_layout_defaults(tmp_path):
    from .localctx import load_inv

    inv = load_inv(tmp_path, {"app": {"root": None}})
    lay = Layout.from_inventory(inv)
    assert (lay.root, lay.user, lay.group, lay.ports, lay.env_path) == (
        "/opt/demo", "demo", "demo", (3001, 3002), f"{tmp_path}/etc/demo.env")
    assert lay.upstream_file == "/etc/nginx/fabship/demo-upstream.conf" and lay.upstream_name == "demo_backend"
    assert lay.blue_green and lay.instance(3001) == "demo@3001.service"


def test_log_roundtrip_and_torn_lines():
    e = ok(R[0], version="v1", user="me@ctl", commit="a" * 40, extra={"port": "3001"})
    text = e.line() + "\n{not json\n\n" + ok(R[1]).line() + "\n"
    got = parse_log(text)
    assert [x.id for x in got] == [R[0], R[1]]
    assert got[0].commit == "a" * 40 and got[0].extra == {"port": "3001"}
    assert json.loads(e.line())["version"] == "v1"


def test_rollback_target_goes_one_back_each_time():
    log = [ok(R[0]), ok(R[1]), ok(R[2], result="failed"), ok(R[3])]
    existing = R[:4]
    assert rollback_target(log, existing, R[3]) == R[1]        # skips the failed release
    assert rollback_target(log, existing, R[1]) == R[0]        # a second rollback goes further back
    assert rollback_target(log, existing, R[0]) is None
    assert rollback_target(log, [R[1], R[3]], R[3]) == R[1]
    assert rollback_target(log, [R[3]], R[3]) is None          # pruned: nothing to go back to


def test_keep_n_never_deletes_current_or_last_good():
    log = [ok(r) for r in R[:6]] + [ok(R[6], result="failed")]
    # keep 2: newest good are R5,R6; current rolled back to R1 -> R1 kept, and R0 (its last good)
    doomed = releases_to_delete(R, log, current=R[1], keep=2)
    assert R[1] not in doomed and R[0] not in doomed
    assert R[4] not in doomed and R[5] not in doomed
    assert doomed == [R[2], R[3], R[6]]                        # failed release dirs go too
    assert releases_to_delete(R[:3], [ok(r) for r in R[:3]], R[2], keep=5) == []
    assert R[6] not in releases_to_delete(R, log, R[5], keep=1, protect=(R[6],))


def test_switch_commands_exact():
    assert switch_current(LAY, R[0]).render() == (
        f"ln -sfn -- releases/{R[0]} /opt/web/current.fabship-tmp && "
        "mv -T -- /opt/web/current.fabship-tmp /opt/web/current")
    assert point_slot(LAY, 3002, R[0]).render() == (
        "install -d -m 0750 -o root -g web -- /opt/web/.fabship /opt/web/.fabship/slots"
        f" && ln -sfn -- /opt/web/releases/{R[0]} /opt/web/.fabship/slots/3002.fabship-tmp && "
        "mv -T -- /opt/web/.fabship/slots/3002.fabship-tmp /opt/web/.fabship/slots/3002")
    assert delete_releases(LAY, [R[0], R[1]]).render() == f"rm -rf -- /opt/web/releases/{R[0]} /opt/web/releases/{R[1]}"
    with pytest.raises(ValueError):
        delete_releases(LAY, [".."])
    assert delete_releases(LAY, []) is None


def test_atomic_switch_locally(tmp_path):
    os.makedirs(tmp_path / "releases" / R[0])
    os.makedirs(tmp_path / "releases" / R[1])
    link = str(tmp_path / "current")
    assert sh(switch_symlink(link, f"releases/{R[0]}")).returncode == 0
    assert os.readlink(link) == f"releases/{R[0]}"
    ino = os.lstat(link).st_ino
    assert sh(switch_symlink(link, f"releases/{R[1]}")).returncode == 0
    assert os.readlink(link) == f"releases/{R[1]}" and os.lstat(link).st_ino != ino  # replaced by rename
    assert not os.path.lexists(link + ".fabship-tmp")


def test_append_lines_script_locally(tmp_path):
    a, b = tmp_path / "s" / "a.jsonl", tmp_path / "s" / "b.log"
    value = "it's \"quoted\" $(touch pwned) `touch pwned2` %s %d \\n"
    cmd = append_lines_script([str(a), str(b)], [value, "second\nline"], ensure_dir=str(tmp_path / "s"))
    for _ in range(2):
        r = sh(cmd)
        assert r.returncode == 0, r.stderr
    assert a.read_text() == f"{value}\n" * 2 and b.read_text() == "second line\n" * 2  # one line each
    assert not (tmp_path / "pwned").exists() and not os.path.exists("pwned2")
    with pytest.raises(ValueError):
        append_lines_script([str(a)], [])


def test_link_shared_locally(tmp_path):
    import grp
    import pwd

    me, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
    lay = Layout(app="web", kind="node", user=me, group=group, root=str(tmp_path), config_dir="/etc/web",
                 env_path="/etc/web/web.env", strategy="restart", port=3000, ports=(), nginx=False)
    rel = tmp_path / "releases" / R[0]
    (rel / "public" / "uploads").mkdir(parents=True)
    (rel / "public" / "uploads" / "shipped.txt").write_text("x")
    r = sh(link_shared(lay, R[0], ["public/uploads", "/logs/"], ["config/settings.json"]))
    assert r.returncode == 0, r.stderr
    assert os.readlink(rel / "public" / "uploads") == f"{tmp_path}/shared/public/uploads"
    assert os.readlink(rel / "logs") == f"{tmp_path}/shared/logs"
    assert os.readlink(rel / "config" / "settings.json") == f"{tmp_path}/shared/config/settings.json"
    assert (tmp_path / "shared" / "config" / "settings.json").exists()
    (tmp_path / "shared" / "config" / "settings.json").write_text("kept")
    assert sh(link_shared(lay, R[0], [], ["config/settings.json"])).returncode == 0
    assert (tmp_path / "shared" / "config" / "settings.json").read_text() == "kept"  # never truncated
    assert link_shared(lay, R[0], [], []) is None


SAMPLE = f"""@@fabship:root
yes
@@fabship:current
releases/{R[1]}
@@fabship:releases
{R[0]}
{R[1]}
lost+found
@@fabship:log
{ok(R[0], image="reg/web:v1").line()}
{ok(R[1]).line()}
@@fabship:lock
{{"user": "a@b", "pid": 12, "epoch": 1}}
@@fabship:upstream
upstream web_backend {{
    server 127.0.0.1:3002;
    keepalive 16;
}}
@@fabship:now
1700000000
@@fabship:units
web@.service
@@fabship:active
web.service inactive
3001 inactive ../releases/{R[0]}
3002 active ../releases/{R[1]}
@@fabship:docker
web-x|{R[0]}|3001|reg/web:v1|exited
@@fabship:compose
docker-compose
@@fabship:git
{"b" * 40}
@@fabship:end
"""


def test_parse_state():
    st = parse_state(SAMPLE)
    assert st.root_exists and st.current == R[1] and st.releases == [R[0], R[1]]
    assert [e.id for e in st.log] == [R[0], R[1]] and st.entry(R[0]).image == "reg/web:v1"
    assert st.lock["pid"] == 12 and st.upstream_port == 3002 and st.now == 1700000000
    assert st.units == ["web@.service"] and st.unit_active == "inactive"
    assert st.slots == {3001: ("inactive", R[0]), 3002: ("active", R[1])}
    assert st.live_port() == 3002
    assert st.containers[0]["name"] == "web-x" and st.running_containers() == []
    assert st.compose_cmd == "docker-compose" and st.git_heads == ["b" * 40]


def test_parse_state_empty_host():
    st = parse_state("@@fabship:root\nno\n@@fabship:current\n@@fabship:end\n")
    assert not st.root_exists and st.current is None and st.lock is None and st.live_port() is None


def test_state_script_runs_locally_on_an_empty_root(tmp_path):
    lay = Layout(app="web", kind="node", user="web", group="web", root=str(tmp_path / "none"), config_dir="/x",
                 env_path="/x/e", strategy="blue_green", port=3000, ports=(3001, 3002), nginx=True)
    r = sh(state_script(lay, git=True))
    st = parse_state(r.stdout.decode())
    assert not st.root_exists and st.current is None and st.releases == [] and st.now > 0


def test_releases_table_rows():
    from tasks.facts.releases import HostState
    from tasks.cli.rollback import release_rows

    st = HostState(current=R[2], releases=[R[1], R[2], R[3]],
                   log=[ok(R[0], version="v0"), ok(R[1], version="v1"), ok(R[2], version="v2", commit="c" * 40),
                        ok(R[3], result="failed"), ok(R[4], result="interrupted"), ok(R[1], action="rollback")])
    rows = release_rows(st)
    assert [r[1] for r in rows] == [R[4], R[3], R[2], R[1]]          # pruned R0 not listed
    assert rows[0][6] == "interrupted (dir removed)" and rows[1][6] == "failed"
    assert rows[2][0] == "*" and rows[2][3] == "c" * 12
    assert rows[3][6] == "ok, rollback ok"
