"""tasks/config/env_sources.py against moto's real HTTP server (Secrets Manager, SSM):
values arrive as Secrets, errors are one line naming the source and the key."""
import json

import boto3
import pytest
import yaml

from tasks.core.commands import Secret
from tasks.config.env_sources import EnvSourceError, load_env_source, parse_secret_text
from tasks.core.errors import ConfigError, FabshipError
from tasks.config.inventory import load_inventory

MARK = "Kx7canaryQ"
REGION = "eu-west-1"


def inv_with(tmp_path, source, name="app"):
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump({"hosts": {"static": {"h1": "10.0.0.1"}}, "env": {"source": source}}))
    return load_inventory(str(p))


def reveal(d):
    return {k: v.reveal() for k, v in d.items()}


@pytest.fixture
def aws(moto_server, aws_env):
    return lambda svc: boto3.client(svc, region_name=REGION, endpoint_url=moto_server)


def test_file_relative_to_inventory(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "prod.env").write_text(f"A={MARK}\nB=2\n")
    inv = inv_with(tmp_path, {"type": "file", "file": "sub/prod.env"})
    monkeypatch.chdir("/")
    ev = load_env_source(inv)
    assert reveal(ev.values) == {"A": MARK, "B": "2"}
    assert all(isinstance(v, Secret) for v in ev.values.values())
    assert ev.label == str(tmp_path / "sub" / "prod.env") and ev.key == "env.source.file"


def test_env_file_option_wins(tmp_path):
    f = tmp_path / "x.env"
    f.write_text("X=1\n")
    inv = inv_with(tmp_path, {"type": "secretsmanager", "secret_id": "nope"})
    ev = load_env_source(inv, env_file=str(f))
    assert reveal(ev.values) == {"X": "1"} and ev.key == "--env-file"


def test_no_source(tmp_path):
    p = tmp_path / "a.yaml"
    p.write_text(yaml.safe_dump({"hosts": {"static": ["10.0.0.1"]}}))
    with pytest.raises(ConfigError) as e:
        load_env_source(load_inventory(str(p)))
    assert str(e.value) == f"{p}: env.source: no env source: pass --env-file PATH or set env.source in the inventory"


def test_secretsmanager_json(tmp_path, aws, moto_server):
    aws("secretsmanager").create_secret(Name="app/prod", SecretString=json.dumps(
        {"APP_SECRET": MARK + "json", "WORKERS": 4, "DEBUG": False}))
    inv = inv_with(tmp_path, {"type": "secretsmanager", "secret_id": "app/prod", "region": REGION,
                              "endpoint_url": moto_server})
    ev = load_env_source(inv)
    assert reveal(ev.values) == {"APP_SECRET": MARK + "json", "WORKERS": "4", "DEBUG": "false"}
    assert ev.label == "secretsmanager:app/prod"
    assert MARK not in repr(ev)


def test_secretsmanager_dotenv_and_binary(tmp_path, aws, moto_server):
    sm = aws("secretsmanager")
    sm.create_secret(Name="app/dotenv", SecretString=f"# c\nA={MARK}\nB='x y'\n")
    sm.create_secret(Name="app/bin", SecretBinary=f"C={MARK}\n".encode())
    for sid, want in (("app/dotenv", {"A": MARK, "B": "x y"}), ("app/bin", {"C": MARK})):
        inv = inv_with(tmp_path, {"type": "secretsmanager", "secret_id": sid, "region": REGION,
                                  "endpoint_url": moto_server, "format": "auto"})
        assert reveal(load_env_source(inv).values) == want


def test_secretsmanager_not_found_names_secret_and_key(tmp_path, aws, moto_server):
    inv = inv_with(tmp_path, {"type": "secretsmanager", "secret_id": "app/missing", "region": REGION,
                              "endpoint_url": moto_server})
    with pytest.raises(EnvSourceError) as e:
        load_env_source(inv)
    assert str(e.value) == f"{inv.path}: env.source.secret_id: secret 'app/missing' not found"


def test_secretsmanager_unreachable(tmp_path, aws_env):
    inv = inv_with(tmp_path, {"type": "secretsmanager", "secret_id": "s", "region": REGION,
                              "endpoint_url": "http://127.0.0.1:9"})
    with pytest.raises(EnvSourceError) as e:
        load_env_source(inv)
    assert str(e.value).startswith(f"{inv.path}: env.source.secret_id: cannot reach the AWS API to read secret 's'")


def test_no_region(tmp_path, aws_env, moto_server):
    inv = inv_with(tmp_path, {"type": "ssm", "path": "/x", "endpoint_url": moto_server})
    with pytest.raises(EnvSourceError) as e:
        load_env_source(inv)
    assert "env.source.region: no AWS region" in str(e.value)


@pytest.mark.parametrize("text,fmt,problem", [
    ('{"A": ', "auto", "secretsmanager:s: not valid JSON (line 1, column 7)"),
    ('["x"]', "json", "secretsmanager:s: expected a JSON object of KEY: value"),
    ('{"1A": "v"}', "json", "secretsmanager:s: 1A: invalid variable name"),
    ('{"A": {"n": "%s"}}' % MARK, "json", "secretsmanager:s: A: expected a string, number or boolean, got an object"),
    ('{"A": null}', "json", "secretsmanager:s: A: expected a string, number or boolean, got null"),
    (f"A='{MARK} junk", "dotenv", "secretsmanager:s: line 1: A: unterminated single quote"),
])
def test_secret_text_errors_never_show_values(text, fmt, problem):
    with pytest.raises(ConfigError) as e:
        parse_secret_text(text, fmt, "secretsmanager:s")
    assert str(e.value).startswith(problem)
    assert MARK not in str(e.value)


def test_ssm_path_decrypts_and_paginates(tmp_path, aws, moto_server):
    ssm = aws("ssm")
    for i in range(23):  # more than one page (PageSize 10)
        ssm.put_parameter(Name=f"/app/prod/K{i:02d}", Value=f"{MARK}{i}", Type="SecureString")
    ssm.put_parameter(Name="/app/prod/PLAIN", Value="p", Type="String")
    ssm.put_parameter(Name="/app/prod/nested/DEEP", Value="d", Type="String")  # not read
    ssm.put_parameter(Name="/app/prodx/OTHER", Value="o", Type="String")      # another prefix
    inv = inv_with(tmp_path, {"type": "ssm", "path": "/app/prod/", "region": REGION, "endpoint_url": moto_server})
    ev = load_env_source(inv)
    got = reveal(ev.values)
    assert got == {**{f"K{i:02d}": f"{MARK}{i}" for i in range(23)}, "PLAIN": "p"}
    assert list(got) == sorted(got)
    assert ev.label == "ssm:/app/prod"


def test_ssm_empty_path(tmp_path, aws, moto_server):
    inv = inv_with(tmp_path, {"type": "ssm", "path": "/nothing/here", "region": REGION, "endpoint_url": moto_server})
    with pytest.raises(EnvSourceError) as e:
        load_env_source(inv)
    assert str(e.value) == f"{inv.path}: env.source.path: no parameters under /nothing/here"


def test_ssm_bad_parameter_name(tmp_path, aws, moto_server):
    aws("ssm").put_parameter(Name="/bad/my-key", Value=MARK, Type="SecureString")
    inv = inv_with(tmp_path, {"type": "ssm", "path": "/bad", "region": REGION, "endpoint_url": moto_server})
    with pytest.raises(ConfigError) as e:
        load_env_source(inv)
    assert str(e.value).startswith("ssm:/bad: /bad/my-key: parameter name is not a valid variable name")
    assert MARK not in str(e.value)


def test_missing_source_keys(tmp_path):
    for src, key in (({"type": "secretsmanager"}, "env.source.secret_id"), ({"type": "ssm"}, "env.source.path"),
                     ({"type": "file"}, "env.source.file")):
        inv = inv_with(tmp_path, src)
        with pytest.raises(ConfigError) as e:
            load_env_source(inv)
        assert e.value.key == key


def test_errors_are_fabship_errors(tmp_path, aws, moto_server):
    """Every failure is a FabshipError: one line at the CLI, no traceback."""
    inv = inv_with(tmp_path, {"type": "ssm", "path": "/p", "region": REGION, "endpoint_url": moto_server})
    with pytest.raises(FabshipError):
        load_env_source(inv)
