"""Names and values that reach ssh_config, nginx and file names: checked as
literal keys, again after {host}/{address} expansion, and in the writers."""
import os

import pytest

from tasks.core.errors import ConfigError
from tasks.config.inventory import check_expanded, load_inventory
from tasks.config.hosts import Host


def inv_file(tmp_path, text, name="inv.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_server_name_that_ends_the_directive_is_refused(tmp_path):
    p = inv_file(tmp_path, "hosts: {static: [a]}\nnginx: {server_name: 'a.example.com; return 301 http://x'}\n")
    with pytest.raises(ConfigError) as e:
        load_inventory(p)
    assert "nginx.server_name" in str(e.value) and p in str(e.value)


@pytest.mark.parametrize("ok", ["{host}.example.com", "a.example.com www.example.com", "*.example.com",
                                r"~^(www\.)?(?<name>.+)\.example\.com$", "_"])
def test_usual_server_names_pass(tmp_path, ok):
    inv = load_inventory(inv_file(tmp_path, f"hosts: {{static: [a]}}\nnginx: {{server_name: '{ok}'}}\n"))
    assert inv.data["nginx"]["server_name"] == ok


@pytest.mark.parametrize("bad", ["a.example.com\nreturn 301 x", "a.example.com  b", "{hostname}.x", '"a"'])
def test_server_name_line_breaks_braces_quotes_are_refused(tmp_path, bad):
    import yaml

    p = inv_file(tmp_path, yaml.safe_dump({"hosts": {"static": ["a"]}, "nginx": {"server_name": bad}}))
    with pytest.raises(ConfigError, match="nginx.server_name"):
        load_inventory(p)


def test_tls_domain_is_a_domain(tmp_path):
    p = inv_file(tmp_path, "hosts: {static: [a]}\ntls: {domains: ['a.example.com -d evil.example']}\n")
    with pytest.raises(ConfigError, match=r"tls.domains\[0\]"):
        load_inventory(p)


def test_value_is_checked_again_after_expansion(tmp_path):
    """{address} of an IPv6 host is no domain name: refused naming the host, key and file."""
    p = inv_file(tmp_path, "hosts: {static: {web6: 'fd00::6', web4: 10.0.0.4}}\n"
                           "tls: {domains: ['{address}']}\n")
    inv = load_inventory(p)
    with pytest.raises(ConfigError) as e:
        inv.resolve_hosts()
    msg = str(e.value)
    assert "tls.domains[0]" in msg and "for host web6" in msg and p in msg and "'fd00::6'" in msg, msg
    assert [h.name for h in inv.resolve_hosts("web4")] == ["web4"]


def test_expansion_check_stops_a_name_from_anywhere(tmp_path):
    """Even a Host built by some other source than discovery: the expanded
    server_name must still be one nginx directive."""
    inv = load_inventory(inv_file(tmp_path, "hosts: {static: [a]}\nnginx: {server_name: '{host}.example.com'}\n"))
    evil = Host(name="x;include /etc/passwd", address="10.0.0.1", user="root", port=22, source="test")
    with pytest.raises(ConfigError, match="nginx.server_name.*for host x;include"):
        check_expanded(inv, [evil])
    check_expanded(inv, [Host(name="web1", address="10.0.0.1", user="root", port=22, source="test")])


@pytest.mark.parametrize("field, value, what", [
    ("user", "root\\n  ProxyCommand touch /tmp/x", "user"),
    ("user", "ec2 user", "user"),
])
def test_static_host_user_is_a_user_name(tmp_path, field, value, what):
    p = inv_file(tmp_path, f'hosts: {{static: {{web: {{address: 10.0.0.1, {field}: "{value}"}}}}}}\n')
    with pytest.raises(ConfigError, match=rf"hosts.static.web.{field}"):
        load_inventory(p)


def test_ssh_user_is_a_user_name(tmp_path):
    p = inv_file(tmp_path, 'hosts: {static: [a]}\nssh: {user: "root\\nHost *"}\n')
    with pytest.raises(ConfigError, match="ssh.user"):
        load_inventory(p)


def test_discovered_host_is_checked_whatever_its_source(tmp_path, monkeypatch):
    from tasks.config import discovery

    inv = load_inventory(inv_file(tmp_path, "hosts: {static: [a]}\n"))
    bad = Host(name="a", address="10.0.0.1\n  ProxyCommand x", user="root", port=22, source="static (test)")
    monkeypatch.setattr(discovery, "static_hosts", lambda inv, spec: [bad])
    with pytest.raises(ConfigError) as e:
        inv.resolve_hosts()
    assert "hosts.static" in str(e.value) and "address" in str(e.value) and "\n" not in str(e.value).strip()


# -- the ssh_config writer ----------------------------------------------------------------------

def test_ssh_config_refuses_whitespace_in_any_value(tmp_path):
    from tasks.verify.gate import ssh_config_text

    kh = tmp_path / "dir with space" / "known_hosts"
    inv = load_inventory(inv_file(tmp_path, f"hosts: {{static: [10.0.0.1]}}\nssh: {{known_hosts: '{kh}'}}\n"))
    with pytest.raises(ConfigError) as e:
        ssh_config_text(inv, inv.resolve_hosts())
    assert "ssh.known_hosts" in str(e.value) and "cannot go into an ssh_config file" in str(e.value)
    inv2 = load_inventory(inv_file(tmp_path, "hosts: {static: [10.0.0.1]}\n", "ok.yaml"))
    evil = Host(name="web", address="10.0.0.1", user="root\n  ProxyCommand touch /tmp/x", port=22, source="t")
    with pytest.raises(ConfigError, match="host 'web'.*cannot go into an ssh_config file"):
        ssh_config_text(inv2, [evil])


def test_ssh_config_forward_agent_and_keepalive_follow_the_inventory(tmp_path):
    from tasks.verify.gate import ssh_config_text

    inv = load_inventory(inv_file(tmp_path, "hosts: {static: [10.0.0.1]}\n"
                                            "ssh: {forward_agent: true, keepalive: 20, dead_after: 4}\n"))
    lines = ssh_config_text(inv, inv.resolve_hosts()).splitlines()
    assert {"  ForwardAgent yes", "  ServerAliveInterval 20", "  ServerAliveCountMax 4"} <= set(lines)
    plain = load_inventory(inv_file(tmp_path, "hosts: {static: [10.0.0.1]}\n", "plain.yaml"))
    assert "ForwardAgent" not in ssh_config_text(plain, plain.resolve_hosts())


# -- fab diagnose --out ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", ".."])
def test_diagnose_report_path_stays_in_out(tmp_path, name):
    from tasks.cli.diagnose import report_path

    with pytest.raises(ConfigError, match="--out"):
        report_path(tmp_path, name)
    assert report_path(tmp_path, "web1") == tmp_path / "web1.txt"


def test_diagnose_report_does_not_follow_a_planted_symlink(tmp_path):
    from tasks.cli.diagnose import write_report

    target = tmp_path / "elsewhere"
    target.write_text("keep")
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(target, out / "web1.txt")
    with pytest.raises(OSError):
        write_report(out, "web1", "report")
    assert target.read_text() == "keep"
    write_report(out, "web2", "report")
    assert (out / "web2.txt").read_text() == "report" and (out / "web2.txt").stat().st_mode & 0o777 == 0o600
