"""Host discovery: one swappable function per source (static list, EC2 by tag).

boto3 is imported only when an inventory asks for EC2: it costs ~0.5 s of
start-up that static inventories should not pay.
"""
from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from ..core.errors import ConfigError, DiscoveryError

if TYPE_CHECKING:
    from .hosts import Host
    from .inventory import Inventory


def discover(inv: "Inventory") -> list["Host"]:
    spec = inv.data["hosts"]
    if spec.get("static") is not None:
        hosts = static_hosts(inv, spec["static"])
    else:
        hosts = ec2_hosts(inv, spec["ec2"])
    seen: dict = {}
    for h in hosts:
        check_host(inv, h)
        if h.name in seen:
            raise inv.error("hosts", f"host name '{h.name}' appears twice")
        seen[h.name] = h
    return hosts


def check_host(inv: "Inventory", h: "Host") -> None:
    """A host's name, address and user reach ssh_config, nginx and file names
    (fab diagnose --out): whatever the source, they are checked like the
    schema's literal keys."""
    from .schema import ADDRESS, NAME_RE, USER_NAME

    where = "hosts.static" if inv.data["hosts"].get("static") is not None else "hosts.ec2"
    for what, value, rule, expected in (
            ("name", h.name, _NameRule(NAME_RE, ADDRESS.pattern), "a host name (letters, digits, '.', '_', '-')"),
            ("address", h.address, ADDRESS.pattern, ADDRESS.expected),
            ("user", h.user, USER_NAME.pattern, USER_NAME.expected)):
        if not isinstance(value, str) or not rule.fullmatch(value):
            raise inv.error(where, f"host {_show(h.name)} ({h.source}): {what} {_show(value)} is not {expected}")


class _NameRule:
    """A name is a NAME, or an address (a static list names each host by its address)."""

    def __init__(self, *patterns):
        self.patterns = patterns

    def fullmatch(self, value):
        return any(p.fullmatch(value) for p in self.patterns)


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr, flush=True)


def static_hosts(inv: "Inventory", static) -> list["Host"]:
    from .hosts import Host

    ssh = inv.data["ssh"]
    src = f"static ({inv.file_of('hosts.static')})"
    out = []
    if isinstance(static, list):
        for addr in static:
            out.append(Host(name=addr, address=addr, user=ssh["user"], port=ssh["port"], source=src))
        return out
    for name, entry in static.items():
        if isinstance(entry, str):
            out.append(Host(name=name, address=entry, user=ssh["user"], port=ssh["port"], source=src))
        else:
            out.append(Host(
                name=name, address=entry["address"], user=entry.get("user") or ssh["user"],
                port=entry.get("port") or ssh["port"], source=src, tags=dict(entry.get("tags") or {}),
                groups=list(entry.get("groups") or []), vars=dict(entry.get("vars") or {}),
            ))
    return out


ADDRESS_FIELDS = {
    "private_ip": "PrivateIpAddress",
    "public_ip": "PublicIpAddress",
    "public_dns": "PublicDnsName",
}


def ec2_filters(spec: dict) -> list[dict]:
    """boto3 Filters from the inventory; running instances only unless the
    inventory names instance-state-name itself."""
    filters = []
    for name, value in (spec.get("filters") or {}).items():
        values = value if isinstance(value, list) else [value]
        filters.append({"Name": name, "Values": [str(v) for v in values]})
    if not any(f["Name"] == "instance-state-name" for f in filters):
        filters.append({"Name": "instance-state-name", "Values": ["running"]})
    return filters


def ec2_client(spec: dict, service: str = "ec2", *, where: str = "hosts.ec2"):
    """A boto3 client on the standard credential chain (env vars, profiles,
    instance role) with an explicit region. AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_<SERVICE>
    are honoured by botocore itself; `endpoint_url` in the inventory wins."""
    import boto3
    from botocore.config import Config

    session = boto3.Session(profile_name=spec.get("profile"), region_name=spec.get("region"))
    endpoint = spec.get("endpoint_url")
    # Fail fast on an unreachable endpoint: a CLI user should not wait through
    # botocore's default five attempts with backoff.
    kwargs = {"config": Config(connect_timeout=5, read_timeout=30, retries={"total_max_attempts": 2, "mode": "standard"})}
    if endpoint:
        kwargs["endpoint_url"] = endpoint
    if session.get_credentials() is None:
        if endpoint or _env_endpoint(service):
            # A local endpoint (moto, localstack) needs no real credentials.
            kwargs.update(aws_access_key_id="testing", aws_secret_access_key="testing")
        else:
            raise DiscoveryError(
                f"{where}: no AWS credentials found (env vars, ~/.aws profile or instance role); "
                "set AWS_PROFILE or the inventory's profile")
    return session.client(service, **kwargs)


def _env_endpoint(service: str) -> bool:
    return bool(os.environ.get("AWS_ENDPOINT_URL") or os.environ.get(f"AWS_ENDPOINT_URL_{service.upper()}"))


def describe_instances(spec: dict) -> list[dict]:
    import botocore.exceptions as bx

    client = ec2_client(spec)
    instances = []
    try:
        for page in client.get_paginator("describe_instances").paginate(
                Filters=ec2_filters(spec), PaginationConfig={"PageSize": 100}):
            for res in page.get("Reservations", []):
                instances.extend(res.get("Instances", []))
    except bx.NoCredentialsError:
        raise DiscoveryError("hosts.ec2: no AWS credentials found (env vars, ~/.aws profile or instance role)") from None
    except bx.ProfileNotFound as e:
        raise DiscoveryError(f"hosts.ec2.profile: {e}") from None
    except bx.EndpointConnectionError as e:
        raise DiscoveryError(f"hosts.ec2: cannot reach the EC2 API: {e}") from None
    except bx.ClientError as e:
        err = e.response.get("Error", {})
        raise DiscoveryError(f"hosts.ec2: EC2 API refused: {err.get('Code')}: {err.get('Message')}") from None
    except bx.BotoCoreError as e:
        raise DiscoveryError(f"hosts.ec2: {e}") from None
    return instances


def ec2_hosts(inv: "Inventory", spec: dict) -> list["Host"]:
    import botocore.exceptions as bx

    from .hosts import Host

    try:
        instances = describe_instances(spec)
    except bx.ProfileNotFound as e:  # raised at session creation
        raise ConfigError(inv.file_of("hosts.ec2"), "hosts.ec2.profile", str(e)) from None
    except DiscoveryError as e:
        raise DiscoveryError(f"{inv.file_of('hosts.ec2')}: {e}") from None
    filt = ", ".join(f"{f['Name']}={','.join(f['Values'])}" for f in ec2_filters(spec))
    file = inv.file_of("hosts.ec2")
    if not instances:
        raise DiscoveryError(f"{file}: hosts.ec2: no instances in {spec['region']} match {filt}")
    if spec.get("max_hosts") and len(instances) > spec["max_hosts"]:
        raise DiscoveryError(
            f"{file}: hosts.ec2.max_hosts: {len(instances)} instances match {filt}, more than "
            f"max_hosts={spec['max_hosts']}; refusing (tighten the filters or raise max_hosts)")
    field = ADDRESS_FIELDS[spec["address"]]
    ssh = inv.data["ssh"]
    name_tag = spec["name_tag"]
    names = [_ec2_name(_tags(i).get(name_tag), i["InstanceId"], name_tag) for i in instances]
    out = []
    for inst, tag_name in zip(instances, names):
        iid = inst["InstanceId"]
        addr = inst.get(field)
        if not addr:
            raise DiscoveryError(
                f"{file}: hosts.ec2.address: instance {iid} ({tag_name or 'no name'}) has no {spec['address']}")
        unique = tag_name and names.count(tag_name) == 1
        name = tag_name if unique else (f"{tag_name}-{iid}" if tag_name else iid)
        tags = _tags(inst)
        tags.setdefault("instance-id", iid)
        out.append(Host(name=name, address=addr, user=ssh["user"], port=ssh["port"],
                        source=f"ec2 {spec['region']} {iid}", tags=tags, groups=list(spec.get("groups") or [])))
    out.sort(key=lambda h: h.name)
    return out


def _ec2_name(tag: str | None, iid: str, name_tag: str) -> str | None:
    """A Name tag is anyone-with-ec2:CreateTags' text: one that is not a plain
    host name (a newline, ';', '/', a space) falls back to the instance id."""
    from .schema import NAME_RE

    if tag is None or tag == "":
        return None
    if NAME_RE.fullmatch(tag):
        return tag
    warn(f"hosts.ec2: instance {iid}: tag {name_tag}={_show(tag)} is not a host name (letters, digits, "
         f"'.', '_', '-'); using {iid}")
    return None


def _tags(inst: dict) -> dict:
    return {t["Key"]: t.get("Value", "") for t in inst.get("Tags") or []}
