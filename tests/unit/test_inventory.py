import textwrap

import pytest

from tasks.core.errors import ConfigError
from tasks.config.inventory import load_inventory


def write(path, text):
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def invdir(tmp_path, monkeypatch):
    d = tmp_path / "inventories"
    d.mkdir()
    monkeypatch.setenv("FABSHIP_ROOT", str(tmp_path))
    monkeypatch.delenv("FABSHIP_INVENTORY", raising=False)
    return d


def test_name_resolves_to_inventories_dir(invdir):
    write(invdir / "web.yaml", "hosts: {static: [10.0.0.1]}\n")
    inv = load_inventory("web")
    assert inv.path == invdir / "web.yaml"
    assert [h.address for h in inv.resolve_hosts()] == ["10.0.0.1"]


def test_default_from_environment(invdir, monkeypatch):
    write(invdir / "web.yaml", "hosts: {static: [10.0.0.1]}\n")
    monkeypatch.setenv("FABSHIP_INVENTORY", "web")
    assert load_inventory(None).name == "web"


def test_no_inventory_given(invdir):
    with pytest.raises(ConfigError, match="FABSHIP_INVENTORY"):
        load_inventory(None)


def test_defaults_filled(invdir):
    write(invdir / "web.yaml", "hosts: {static: [a]}\n")
    d = load_inventory("web").data
    assert d["ssh"] == {"user": "root", "key_file": None, "port": 22, "known_hosts": "~/.ssh/known_hosts",
                        "connect_timeout": 10, "command_timeout": 1800, "jump_host": None}
    assert d["app"] is None and d["deploy"] is None


def test_layer_order(invdir):
    """defaults < include < file < NAME.local.yaml < --set"""
    write(invdir / "base.yaml", """
        hosts: {static: [base-host]}
        ssh: {user: base, port: 2201, connect_timeout: 3}
        packages: [a, b]
    """)
    write(invdir / "web.yaml", """
        include: [base]
        hosts: {static: {web1: 10.0.0.1}}
        ssh: {user: file, port: 2202}
    """)
    write(invdir / "web.local.yaml", "ssh: {port: 2203, key_file: /keys/me}\n")
    inv = load_inventory("web", overrides=["ssh.user=cli"])
    ssh = inv.data["ssh"]
    assert ssh["user"] == "cli"            # --set wins
    assert ssh["port"] == 2203             # local beats file
    assert ssh["key_file"] == "/keys/me"
    assert ssh["connect_timeout"] == 3     # from the include
    assert ssh["known_hosts"] == "~/.ssh/known_hosts"  # built-in default
    assert inv.data["packages"] == ["a", "b"]
    # hosts is replaced whole, never mixed
    assert [h.name for h in inv.resolve_hosts()] == ["web1"]
    assert inv.files == [str(invdir / "web.yaml"), str(invdir / "web.local.yaml")]


def test_error_names_the_file_that_set_the_key(invdir):
    write(invdir / "web.yaml", "hosts: {static: [a]}\nssh: {port: 22}\n")
    write(invdir / "web.local.yaml", "ssh: {port: nope}\n")
    with pytest.raises(ConfigError) as e:
        load_inventory("web")
    assert str(e.value).startswith(str(invdir / "web.local.yaml") + ": ssh.port: expected an integer")


def test_error_in_include_names_included_file(invdir):
    write(invdir / "base.yaml", "hosts: {static: [a]}\nssh: {connect_timeout: soon}\n")
    write(invdir / "web.yaml", "include: base\n")
    with pytest.raises(ConfigError) as e:
        load_inventory("web")
    assert str(invdir / "base.yaml") in str(e.value)
    assert "ssh.connect_timeout" in str(e.value)


def test_set_override_error_names_command_line(invdir):
    write(invdir / "web.yaml", "hosts: {static: [a]}\n")
    with pytest.raises(ConfigError, match="^command line: ssh.port"):
        load_inventory("web", overrides=["ssh.port=abc"])


@pytest.mark.parametrize("text, key, problem", [
    ("hosts: {static: [a]}\nssh: {usr: x}\n", "ssh.usr", "did you mean 'user'"),
    ("hosts: {static: [a]}\nbogus: 1\n", "bogus", "unknown key"),
    ("hosts: {static: [a]}\nssh: {port: 70000}\n", "ssh.port", "from 1 to 65535"),
    ("hosts: {ec2: {filters: {'tag:Name': x}}}\n", "hosts.ec2.region", "required key is missing"),
    ("hosts: {ec2: {region: us-east-1, address: elastic}}\n", "hosts.ec2.address", "private_ip, public_ip, public_dns"),
    ("hosts: {ec2: {region: us-east-1, max_hosts: 0}}\n", "hosts.ec2.max_hosts", ">= 1"),
    ("hosts: {}\n", "hosts", "exactly one host source"),
    ("hosts: {static: [a], ec2: {region: us-east-1}}\n", "hosts", "got both"),
    ("ssh: {user: x}\n", "hosts", "required key is missing"),
    ("hosts: {static: [a]}\nenv: {path: /etc/a.env, mode: 644}\n", "env.mode", "quoted"),
    ("hosts: {static: [a]}\nenv: {path: relative.env}\n", "env.path", "absolute path"),
    ("hosts: {static: [a]}\nswap: {size: lots}\n", "swap.size", "512M or 2G"),
    ("hosts: {static: [a]}\napp: {name: x}\n", "app.kind", "required"),
    ("hosts: {static: [a]}\napp: {name: x, kind: java}\n", "app.kind", "one of node"),
    ("hosts: {static: [a]}\npackages: nginx\n", "packages", "list"),
    ("hosts: {static: [a]}\nhealth: {retries: '3'}\n", "health.retries", "integer"),
])
def test_bad_inventories_name_file_key_and_expectation(invdir, text, key, problem):
    write(invdir / "bad.yaml", text)
    with pytest.raises(ConfigError) as e:
        load_inventory("bad")
    msg = str(e.value)
    assert msg.startswith(str(invdir / "bad.yaml") + ": " + key + ":"), msg
    assert problem in msg
    assert "\n" not in msg


def test_malformed_yaml_names_line(invdir):
    write(invdir / "bad.yaml", "hosts:\n  static: [a\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: line \d+, column \d+: invalid YAML"):
        load_inventory("bad")


def test_duplicate_keys_are_errors(invdir):
    write(invdir / "bad.yaml", "hosts: {static: [a]}\nssh: {port: 22}\nssh: {port: 23}\n")
    with pytest.raises(ConfigError, match="duplicate key 'ssh'"):
        load_inventory("bad")


def test_include_cycle(invdir):
    write(invdir / "a.yaml", "include: [b]\nhosts: {static: [x]}\n")
    write(invdir / "b.yaml", "include: [a]\n")
    with pytest.raises(ConfigError, match="include cycle"):
        load_inventory("a")


def test_unknown_inventory_lists_known(invdir):
    write(invdir / "prod.yaml", "hosts: {static: [x]}\n")
    with pytest.raises(ConfigError, match="known: prod"):
        load_inventory("prd")


def test_groups_vars_and_limit(invdir):
    write(invdir / "web.yaml", """
        hosts:
          static:
            w1: 10.0.0.1
            w2: {address: 10.0.0.2, tags: {role: worker}, vars: {color: blue}}
        vars: {color: red, size: 1}
        groups:
          web: {hosts: [w1], vars: {size: 2}}
          workers: {tags: {role: worker}}
    """)
    inv = load_inventory("web")
    hosts = {h.name: h for h in inv.resolve_hosts()}
    assert hosts["w1"].groups == ["web"] and hosts["w1"].vars == {"color": "red", "size": 2}
    assert hosts["w2"].groups == ["workers"] and hosts["w2"].vars == {"color": "blue", "size": 1}
    assert [h.name for h in inv.resolve_hosts("workers")] == ["w2"]
    with pytest.raises(ConfigError, match="matches no host"):
        inv.resolve_hosts("nope")


def test_group_naming_unknown_host(invdir):
    write(invdir / "web.yaml", "hosts: {static: {w1: a}}\ngroups: {web: {hosts: [w9]}}\n")
    with pytest.raises(ConfigError, match="groups.web.hosts: host 'w9'"):
        load_inventory("web").resolve_hosts()


def test_host_expand():
    from tasks.config.hosts import Host

    h = Host("h1", "10.0.0.1", "root", 22, "static")
    assert h.expand("{host}.sandbox.test") == "h1.sandbox.test"
    assert h.expand(["{address}"]) == ["10.0.0.1"]


def test_missing_generated_sandbox_inventory_says_how_to_make_it(invdir):
    write(invdir / "sandbox-app.yaml", "include: [sandbox]\napp: {name: a, kind: node}\n")
    with pytest.raises(ConfigError, match=r"include\[0\]: sandbox: inventory 'sandbox' not found: it is generated "
                                          r"by `fab sandbox.up`"):
        load_inventory("sandbox-app")


def test_set_changes_one_key_of_hosts(invdir):
    """--set hosts.ec2.max_hosts=2 keeps region and filters (README: --set changes one key)."""
    write(invdir / "cloud.yaml", "hosts:\n  ec2: {region: eu-west-1, filters: {'tag:Name': web}}\n")
    inv = load_inventory("cloud", overrides=["hosts.ec2.max_hosts=2"])
    assert inv.data["hosts"]["ec2"]["region"] == "eu-west-1"
    assert inv.data["hosts"]["ec2"]["filters"] == {"tag:Name": "web"}
    assert inv.data["hosts"]["ec2"]["max_hosts"] == 2
    assert inv.file_of("hosts.ec2.max_hosts") == "command line"
    assert inv.file_of("hosts.ec2.region") == str(invdir / "cloud.yaml")


def test_set_naming_the_other_host_source_switches_to_it(invdir):
    write(invdir / "cloud.yaml", "hosts:\n  ec2: {region: eu-west-1}\n")
    inv = load_inventory("cloud", overrides=["hosts.static=[10.0.0.9]"])
    assert inv.data["hosts"]["ec2"] is None
    assert [h.address for h in inv.resolve_hosts()] == ["10.0.0.9"]


def test_file_still_replaces_an_included_hosts_section(invdir):
    write(invdir / "base.yaml", "hosts:\n  ec2: {region: eu-west-1}\n")
    write(invdir / "web.yaml", "include: [base]\nhosts: {static: [10.0.0.1]}\n")
    assert load_inventory("web").data["hosts"]["ec2"] is None
