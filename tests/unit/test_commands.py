import json

import pytest

from tasks.core.commands import MASK, Cmd, Raw, Secret, and_then, as_user, become, mask_text, script, sh


def test_parts_are_quoted():
    assert Cmd("install", "-d", "-m", "0755", "--", "/opt/my app").render() == \
        "install -d -m 0755 -- '/opt/my app'"
    assert Cmd("echo", "a;rm -rf /").render() == "echo 'a;rm -rf /'"


def test_raw_parts_are_operators():
    assert Cmd("true", Raw("&&"), "echo", "$HOME").render() == "true && echo '$HOME'"


def test_sh_formats_quoted_values():
    assert sh("mkdir -p -- {}", "/x y").render() == "mkdir -p -- '/x y'"


def test_and_then_and_script():
    assert and_then(Cmd("a"), Cmd("b")).render() == "a && b"
    s = script([Cmd("echo", "x y"), "true"])
    assert s.parts[:2] == ["sh", "-c"]
    assert s.parts[2] == "set -eu\necho 'x y'\ntrue"


def test_become_wraps_for_non_root():
    assert become(Cmd("id"), "root").render() == "id"
    assert become(Cmd("id", "-u"), "ec2-user").render() == "sudo -n -H -- sh -c 'id -u'"


def test_as_user():
    assert as_user("app", Cmd("npm", "ci")).render() == "runuser -u app -- sh -c 'npm ci'"


@pytest.mark.parametrize("fmt", [str, repr, lambda s: f"{s}", lambda s: "%s" % s, lambda s: "{}".format(s),
                                 lambda s: json.dumps({"v": s}, default=str)])
def test_secret_masks_itself_everywhere(fmt):
    s = Secret("CANARY-123456")
    assert "CANARY" not in fmt(s)
    assert MASK in fmt(s)


def test_secret_in_exception_and_containers():
    s = Secret("CANARY-abcdef")
    assert "CANARY" not in str(ValueError(s))
    assert "CANARY" not in repr({"k": s, "l": [s]})
    assert s.reveal() == "CANARY-abcdef"


def test_secret_refused_on_command_line():
    with pytest.raises(ValueError, match="secret"):
        Cmd("echo", Secret("x"))
    with pytest.raises(ValueError):
        sh("echo {}", Secret("x"))


def test_secret_cannot_be_pickled():
    import pickle

    with pytest.raises(TypeError):
        pickle.dumps(Secret("x"))


def test_mask_text_replaces_known_values():
    assert mask_text("token=abcdef and abcdef", [Secret("abcdef")]) == "token=*** and ***"
