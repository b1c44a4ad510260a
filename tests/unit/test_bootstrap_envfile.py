"""tasks/resources/envfile.py: dotenv parsing, rendering, key diffs and the install script
(run locally with sh in a temp dir: the same script that runs on hosts)."""
import grp
import os
import pwd
import stat
import subprocess

import pytest

from tasks.core.commands import Secret
from tasks.resources.envfile import install_cmd
from tasks.core.dotenv import key_diff, key_hashes_cmd, parse_dotenv, parse_key_hashes, quote_value, render_dotenv, sha256_hex, value_hashes
from tasks.core.errors import ConfigError


def reveal(d):
    return {k: v.reveal() for k, v in d.items()}


def test_parse_forms():
    text = ("# comment\n\nexport A=1\nB = 'x y' # c\nC=\"multi\nline \\\" q\\n\"\n"
            "D=plain #comment\nE=\nF=a\\b\nG=x#y\n")
    assert reveal(parse_dotenv(text, "t.env")) == {
        "A": "1", "B": "x y", "C": 'multi\nline " q\n', "D": "plain", "E": "", "F": "a\\b", "G": "x#y"}


def test_values_are_secrets():
    v = parse_dotenv("TOKEN=hunter22\n", "t.env")
    assert isinstance(v["TOKEN"], Secret)
    assert "hunter22" not in f"{v} {v['TOKEN']!r}"


@pytest.mark.parametrize("text,problem", [
    ("NOEQUALS\n", "line 1: expected KEY=VALUE"),
    ("1BAD=x\n", "line 1: invalid variable name '1BAD': expected letters, digits and '_', "
                   "not starting with a digit"),
    ("A=1\nA=2\n", "line 2: A is already set on line 1"),
    ("A='open\n", "line 1: A: unterminated single quote"),
    ('A="open\nmore\n', "line 1: A: unterminated double quote"),
    ("A='x' junk\n", "line 1: A: unexpected text after the closing quote"),
])
def test_parse_errors_name_line_not_value(text, problem):
    with pytest.raises(ConfigError) as e:
        parse_dotenv(text, "prod.env")
    assert str(e.value) == f"prod.env: {problem}"


def test_error_never_shows_value():
    with pytest.raises(ConfigError) as e:
        parse_dotenv("SECRET='s3cr3tvalue junk\n", "x.env")
    assert "s3cr3tvalue" not in str(e.value)


@pytest.mark.parametrize("value,rendered", [
    ("abc", "abc"), ("", ""), ("postgres://u:p@h/db?x=1", "postgres://u:p@h/db?x=1"),
    ("a b", "a b"), (" lead", '" lead"'), ("trail ", '"trail "'), ("a\\b", '"a\\\\b"'),
    ('"q', '"\\"q"'), ("'q", "\"'q\""), ("l1\nl2", '"l1\nl2"'), ("a #b", '"a #b"'), ("$x`y", "$x`y"),
    (" $x", '" \\$x"'),
])
def test_quote_value(value, rendered):
    assert quote_value(value) == rendered


def test_render_round_trip_and_header():
    vals = {"A": Secret("1"), "B": Secret("x y"), "C": Secret('multi\nline " q'), "D": Secret(" $HOME\\")}
    out = render_dotenv(vals)
    assert out.startswith(b"# Managed by fabship")
    assert reveal(parse_dotenv(out.decode(), "r")) == reveal(vals)
    assert out.decode().splitlines()[1:3] == ["A=1", "B=x y"]


def test_key_diff_names_only():
    old = value_hashes({"A": "1", "B": "2", "C": "3"})
    new = value_hashes({"A": "1", "B": "changed", "D": "4"})
    assert key_diff(old, new) == (["D"], ["C"], ["B"])


def _sh(cmd, stdin=b""):
    return subprocess.run(cmd.render(), input=stdin, capture_output=True, shell=True)


def test_install_script_writes_0600_keeps_prev_and_is_idempotent(tmp_path):
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    path = tmp_path / "app.env"
    first = render_dotenv({"A": "1"})
    r = _sh(install_cmd(str(path), user, group, "0600", sha256_hex(first)), first)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().splitlines()[0] == "changed"
    assert path.read_bytes() == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # same content: nothing written
    ino = path.stat().st_ino
    r = _sh(install_cmd(str(path), user, group, "0600", sha256_hex(first)), first)
    assert r.stdout.decode().splitlines()[0] == "unchanged"
    assert path.stat().st_ino == ino
    # new content: old kept as .prev (0600), new renamed in (new inode)
    second = render_dotenv({"A": "2"})
    r = _sh(install_cmd(str(path), user, group, "0640", sha256_hex(second)), second)
    assert r.returncode == 0, r.stderr
    assert path.read_bytes() == second and path.stat().st_ino != ino
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert (tmp_path / "app.env.prev").read_bytes() == first
    assert stat.S_IMODE((tmp_path / "app.env.prev").stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.env", "app.env.prev"]  # no temp left


def test_install_script_refuses_truncated_upload(tmp_path):
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    path = tmp_path / "app.env"
    data = render_dotenv({"A": "1"})
    r = _sh(install_cmd(str(path), user, group, "0600", sha256_hex(data)), data[:-3])
    assert r.returncode == 4 and b"sha256 mismatch" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_key_hashes_cmd_matches_value_hashes(tmp_path):
    vals = {"A": "1", "B": "x y", "C": " spaced", "D": "a$b"}
    path = tmp_path / "app.env"
    path.write_bytes(render_dotenv(vals))
    r = _sh(key_hashes_cmd(str(path)))
    assert parse_key_hashes(r.stdout.decode()) == value_hashes(vals)


def test_install_cmd_has_no_value():
    data = render_dotenv({"TOKEN": "supersecretvalue"})
    assert "supersecretvalue" not in install_cmd("/etc/a/a.env", "root", "a", "0600", sha256_hex(data)).render()
