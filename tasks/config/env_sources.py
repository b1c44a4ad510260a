"""Where an app's env values come from, chosen in the inventory's env.source:

    env:
      source: {type: file, file: secrets/prod.env}            # or --env-file PATH
      source: {type: secretsmanager, secret_id: myapp/prod, format: auto}   # JSON or dotenv
      source: {type: ssm, path: /myapp/prod}                  # SecureString decrypted

AWS is reached through boto3 on the standard credential chain
(`discovery.ec2_client`), so env vars, profiles, instance roles and
AWS_ENDPOINT_URL all work; `endpoint_url` points at moto in tests.

Every value is wrapped in `Secret` the moment it is read. Errors name the
source (file, secret id, parameter path) and the inventory key that chose it,
never a value.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..core.commands import Secret
from ..core.dotenv import KEY_RE, load_dotenv_file, parse_dotenv
from ..core.errors import ConfigError, FabshipError


class EnvSourceError(FabshipError):
    """An env source could not be read (AWS refused, not found, bad format)."""


@dataclass
class EnvValues:
    values: dict[str, Secret]
    label: str   # what to name in messages: a path, secretsmanager:ID, ssm:/PATH
    key: str     # the option or inventory key that chose the source


def load_env_source(inv, env_file: str | None = None) -> EnvValues:
    """Read the new env values: `--env-file` wins over the inventory's env.source."""
    if env_file:
        values, shown = load_dotenv_file(env_file)
        return EnvValues(values, shown, "--env-file")
    spec = inv.get("env.source")
    if not spec:
        raise ConfigError(inv.path, "env.source",
                          "no env source: pass --env-file PATH or set env.source in the inventory")
    kind = spec.get("type") or "file"
    if kind == "file":
        return from_file(inv, spec)
    if kind == "secretsmanager":
        return from_secretsmanager(inv, spec)
    return from_ssm(inv, spec)


def from_file(inv, spec: dict) -> EnvValues:
    raw = spec.get("file")
    if not raw:
        raise inv.error("env.source.file", "type is file: set env.source.file (or pass --env-file)")
    p = Path(raw).expanduser()
    if not p.is_absolute():
        # relative to the inventory file that set it, so it works from any cwd
        p = Path(inv.file_of("env.source.file")).parent / p
    values, shown = load_dotenv_file(p)
    return EnvValues(values, shown, "env.source.file")


# -- AWS --------------------------------------------------------------------------------------

def aws_spec(inv, spec: dict) -> dict:
    """Region/profile/endpoint for the AWS client; region and profile fall back
    to hosts.ec2's, then to the standard chain (AWS_REGION, ~/.aws/config)."""
    ec2 = inv.get("hosts.ec2") or {}
    return {
        "region": spec.get("region") or ec2.get("region"),
        "profile": spec.get("profile") or ec2.get("profile"),
        "endpoint_url": spec.get("endpoint_url"),
    }


def _client(inv, spec: dict, service: str, where: str):
    import botocore.exceptions as bx

    from .discovery import ec2_client

    try:
        return ec2_client(aws_spec(inv, spec), service, where=where)
    except bx.ProfileNotFound as e:
        raise inv.error("env.source.profile", str(e)) from None
    except FabshipError as e:
        raise EnvSourceError(f"{inv.file_of('env.source')}: {e}") from None


def _aws_error(e, inv, key: str, what: str) -> EnvSourceError:
    """One line for any botocore failure; the message names `what`, never a value."""
    import botocore.exceptions as bx

    file = inv.file_of("env.source")
    if isinstance(e, bx.ClientError):
        err = e.response.get("Error", {})
        code = err.get("Code") or "Error"
        if code in ("ResourceNotFoundException", "ParameterNotFound"):
            return EnvSourceError(f"{file}: {key}: {what} not found")
        msg = (err.get("Message") or "").splitlines()[0] if err.get("Message") else ""
        return EnvSourceError(f"{file}: {key}: AWS refused to read {what}: {code}" + (f": {msg}" if msg else ""))
    if isinstance(e, bx.NoRegionError):
        return EnvSourceError(f"{file}: env.source.region: no AWS region for {what} "
                              "(set env.source.region or AWS_REGION)")
    if isinstance(e, bx.NoCredentialsError):
        return EnvSourceError(f"{file}: {key}: no AWS credentials to read {what} "
                              "(env vars, ~/.aws profile or instance role)")
    if isinstance(e, bx.EndpointConnectionError):
        return EnvSourceError(f"{file}: {key}: cannot reach the AWS API to read {what}: {e}")
    return EnvSourceError(f"{file}: {key}: reading {what} failed: {type(e).__name__}")


def from_secretsmanager(inv, spec: dict) -> EnvValues:
    import botocore.exceptions as bx

    sid = spec.get("secret_id")
    if not sid:
        raise inv.error("env.source.secret_id", "type is secretsmanager: set env.source.secret_id")
    label = f"secretsmanager:{sid}"
    what = f"secret {sid!r}"
    try:
        client = _client(inv, spec, "secretsmanager", "env.source")
        resp = client.get_secret_value(SecretId=sid)
    except (bx.BotoCoreError, bx.ClientError) as e:
        raise _aws_error(e, inv, "env.source.secret_id", what) from None
    text = resp.get("SecretString")
    if text is None:
        blob = resp.get("SecretBinary") or b""
        try:
            text = blob.decode("utf-8")
        except UnicodeDecodeError:
            raise EnvSourceError(f"{label}: binary secret is not UTF-8 text "
                                 f"({inv.file_of('env.source')}: env.source.secret_id)") from None
    del resp
    return EnvValues(parse_secret_text(text, spec.get("format") or "auto", label), label, "env.source.secret_id")


def parse_secret_text(text: str, fmt: str, label: str) -> dict[str, Secret]:
    """A secret's value as env values: a JSON object of KEY -> scalar, or dotenv text."""
    if fmt == "auto":
        fmt = "json" if text.lstrip().startswith("{") else "dotenv"
    if fmt == "dotenv":
        return parse_dotenv(text, label)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        # e's message holds no document text, but build our own to be sure
        raise ConfigError(label, "", f"not valid JSON (line {e.lineno}, column {e.colno})") from None
    if not isinstance(data, dict):
        raise ConfigError(label, "", "expected a JSON object of KEY: value")
    out: dict[str, Secret] = {}
    for k, v in data.items():
        if not KEY_RE.fullmatch(k):
            shown = k if len(k) <= 40 else k[:37] + "..."
            raise ConfigError(label, shown, "invalid variable name: expected letters, digits and '_', "
                                            "not starting with a digit")
        if isinstance(v, bool):
            v = "true" if v else "false"
        elif isinstance(v, (int, float)):
            v = json.dumps(v)
        elif not isinstance(v, str):
            kind = "null" if v is None else "an object" if isinstance(v, dict) else "a list"
            raise ConfigError(label, k, f"expected a string, number or boolean, got {kind}")
        out[k] = Secret(v)
    return out


def ssm_path(path: str) -> str:
    return path if path == "/" else path.rstrip("/")


def from_ssm(inv, spec: dict) -> EnvValues:
    """Parameters directly under the path (not nested ones): /myapp/prod/DB_URL -> DB_URL.
    SecureString values are decrypted (WithDecryption); all pages are read."""
    import botocore.exceptions as bx

    raw = spec.get("path")
    if not raw:
        raise inv.error("env.source.path", "type is ssm: set env.source.path (a parameter path prefix)")
    path = ssm_path(raw)
    label = f"ssm:{path}"
    what = f"parameters under {path}"
    out: dict[str, Secret] = {}
    try:
        client = _client(inv, spec, "ssm", "env.source")
        pages = client.get_paginator("get_parameters_by_path").paginate(
            Path=path, Recursive=False, WithDecryption=True, PaginationConfig={"PageSize": 10})
        names = []
        for page in pages:
            for p in page.get("Parameters", []):
                name = p["Name"]
                key = name.rsplit("/", 1)[-1]
                if not KEY_RE.fullmatch(key):
                    raise ConfigError(label, name, "parameter name is not a valid variable name "
                                                   "(letters, digits and '_', not starting with a digit)")
                names.append(key)
                out[key] = Secret(p.get("Value", ""))
    except (bx.BotoCoreError, bx.ClientError) as e:
        raise _aws_error(e, inv, "env.source.path", what) from None
    if not out:
        raise EnvSourceError(f"{inv.file_of('env.source')}: env.source.path: no parameters under {path}")
    return EnvValues({k: out[k] for k in sorted(out)}, label, "env.source.path")
