"""The provision config, typed and cross-checked: what `fab provision` manages,
under which names and tags. Pure: reads the inventory (and the public key file),
calls no API. Every problem is a ConfigError naming the file and the key."""
from __future__ import annotations

import base64
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import ConfigError

# Every resource fabship creates carries these three tags; only resources that
# carry all three with this inventory's values are changed or destroyed.
MANAGED_BY = "ManagedBy"
MANAGED_BY_VALUE = "fabship"
PROJECT_TAG = "fabship:project"
ENV_TAG = "fabship:env"


@dataclass(frozen=True)
class Ref:
    """An existing resource given by id or by tags (Name tag for `name`)."""
    id: str | None = None
    tags: tuple = ()

    @classmethod
    def of(cls, raw: dict | None) -> "Ref | None":
        if not raw:
            return None
        tags = dict(raw.get("tags") or {})
        if raw.get("name"):
            tags["Name"] = raw["name"]
        return cls(id=raw.get("id"), tags=tuple(sorted(tags.items())))

    def describe(self) -> str:
        return self.id or ", ".join(f"tag:{k}={v}" for k, v in self.tags)

    def filters(self) -> list[dict]:
        return [{"Name": f"tag:{k}", "Values": [v]} for k, v in self.tags]


@dataclass
class Spec:
    file: str                      # the inventory file that set `provision`
    project: str
    env: str
    resource: str
    region: str
    client: dict                   # region/profile/endpoint_url for tasks.config.discovery.ec2_client
    extra_tags: dict
    vpc: Ref | None = None
    subnet: Ref | None = None
    bucket: dict | None = None     # name, tags
    role: dict | None = None       # name, profile_name, s3_actions
    security_group: dict | None = None
    key_pair: dict | None = None   # name, public_key (type, base64), file
    instance: dict | None = None
    eip: dict | None = None
    dns: dict | None = None        # zone (dict), record (fqdn with dot), ttl
    address_field: str = "private_ip"
    ssh_port: int = 22
    known_hosts: Path | None = None
    host_filters: dict = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"{self.project}-{self.env}-{self.resource}"

    def tags(self, name: str, extra: dict | None = None) -> dict:
        out = {"Name": name, **self.extra_tags, **(extra or {})}
        out.update({MANAGED_BY: MANAGED_BY_VALUE, PROJECT_TAG: self.project, ENV_TAG: self.env})
        return out

    def tag_list(self, name: str, extra: dict | None = None) -> list[dict]:
        return [{"Key": k, "Value": v} for k, v in self.tags(name, extra).items()]

    def managed(self, tags: dict) -> bool:
        return (tags.get(MANAGED_BY) == MANAGED_BY_VALUE and tags.get(PROJECT_TAG) == self.project
                and tags.get(ENV_TAG) == self.env)

    @property
    def managed_desc(self) -> str:
        return f"{MANAGED_BY}={MANAGED_BY_VALUE}, {PROJECT_TAG}={self.project}, {ENV_TAG}={self.env}"


def tag_dict(tags) -> dict:
    return {t["Key"]: t.get("Value", "") for t in tags or []}


def build_spec(inv) -> Spec:
    raw = inv.get("provision")
    if not raw:
        raise ConfigError(inv.path, "provision", "this inventory has no provision section (see README: fab provision)")
    file = inv.file_of("provision")

    def err(key, problem):
        return inv.error(f"provision.{key}" if key else "provision", problem)

    env = raw.get("env") or inv.get("environment")
    if not env:
        raise err("env", "required (or the inventory's `environment`)")
    if env != env.lower():
        raise err("env", f"must be lowercase (it is part of the S3 bucket name), got {env!r}")
    ec2 = inv.get("hosts.ec2") or {}
    region = raw.get("region") or ec2.get("region")
    if not region:
        raise err("region", "required (or hosts.ec2.region)")
    client = {"region": region, "profile": raw.get("profile") or ec2.get("profile"),
              "endpoint_url": raw.get("endpoint_url") or ec2.get("endpoint_url")}
    spec = Spec(file=file, project=raw["project"], env=env, resource=raw["resource"], region=region,
                client=client, extra_tags=dict(raw.get("tags") or {}),
                vpc=Ref.of(raw.get("vpc")), subnet=Ref.of(raw.get("subnet")),
                address_field=ec2.get("address") or "private_ip",
                ssh_port=inv.get("ssh.port") or 22, host_filters=dict(ec2.get("filters") or {}))
    for k in ("Name", MANAGED_BY, PROJECT_TAG, ENV_TAG):
        if k in spec.extra_tags:
            raise err(f"tags.{k}", "is set by fabship itself")
    base = spec.base
    if raw.get("bucket") is not None:
        b = raw["bucket"]
        name = b.get("name") or f"{base}-bucket"
        if len(name) > 63:
            raise err("bucket.name", f"{name!r} is longer than the 63 characters S3 allows: set a shorter one")
        spec.bucket = {"name": name, "tags": dict(b.get("tags") or {})}
    if raw.get("role") is not None:
        if spec.bucket is None:
            raise err("role", "needs provision.bucket: its policy grants access to that bucket only")
        r = raw["role"]
        spec.role = {"name": r.get("name") or f"{base}-role", "profile_name": r.get("profile_name") or f"{base}-profile",
                     "s3_actions": list(r["s3_actions"])}
    if raw.get("security_group") is not None:
        if spec.vpc is None and spec.subnet is None:
            raise err("security_group", "needs provision.vpc or provision.subnet (the VPC it belongs to)")
        g = raw["security_group"]
        for i, c in enumerate(g["ssh_cidrs"]):
            try:
                ipaddress.ip_network(c)
            except ValueError as e:
                raise err(f"security_group.ssh_cidrs[{i}]", f"{c!r} is not a network: {e}") from None
        spec.security_group = {**g, "name": g.get("name") or f"{base}-sg"}
    if raw.get("key_pair") is not None:
        k = raw["key_pair"]
        spec.key_pair = {"name": k.get("name") or f"{base}-key",
                         **read_public_key(inv, "provision.key_pair.public_key_file", k["public_key_file"])}
    if raw.get("instance") is not None:
        if spec.subnet is None:
            raise err("instance", "needs provision.subnet (id or tags of the subnet to launch in)")
        i = raw["instance"]
        spec.instance = {**i, "name": i.get("name") or base, "ami": dict(i.get("ami") or {})}
        _check_discovery(inv, spec)
    if raw.get("eip") is not None:
        if spec.instance is None:
            raise err("eip", "needs provision.instance (the address is associated with it)")
        spec.eip = {"name": raw["eip"].get("name") or f"{base}-eip"}
    if raw.get("dns") is not None:
        if spec.instance is None:
            raise err("dns", "needs provision.instance (the record points at its address)")
        d = raw["dns"]
        record = d["record"].lower().rstrip(".") + "."
        zone = dict(d["zone"])
        if zone.get("name"):
            zone["name"] = zone["name"].lower().rstrip(".") + "."
            if not (record == zone["name"] or record.endswith("." + zone["name"])):
                raise err("dns.record", f"{d['record']} is not inside the zone {zone['name'].rstrip('.')}")
        if zone.get("id"):
            zone["id"] = zone["id"].rsplit("/", 1)[-1]
        spec.dns = {"zone": zone, "record": record, "ttl": d["ttl"]}
    from ..core.ssh import known_hosts_path

    spec.known_hosts = known_hosts_path(inv)
    return spec


def _check_discovery(inv, spec: Spec) -> None:
    """The provisioned instance must be the host the inventory discovers: EC2 discovery,
    with tag filters the instance's own tags satisfy."""
    if inv.get("hosts.ec2") is None:
        raise inv.error("hosts", "provision.instance needs EC2 discovery (hosts.ec2 with filters "
                                 f"{{\"tag:Name\": {spec.instance['name']}}}) to find the instance it creates")
    tags = spec.tags(spec.instance["name"])
    for name, value in spec.host_filters.items():
        if not name.startswith("tag:"):
            continue
        values = [str(v) for v in (value if isinstance(value, list) else [value])]
        if tags.get(name[4:]) not in values:
            raise inv.error(f"hosts.ec2.filters.{name}",
                            f"{','.join(values)} does not match the provisioned instance "
                            f"({name[4:]}={tags.get(name[4:], '(not set)')}): discovery would not find it")


def read_public_key(inv, key: str, raw_path: str) -> dict:
    """An OpenSSH public key line, relative to the inventory file that set it."""
    p = Path(raw_path).expanduser()
    if not p.is_absolute():
        p = Path(inv.file_of(key)).parent / p
    try:
        text = p.read_text().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise inv.error(key, f"cannot read {p}: {getattr(e, 'strerror', None) or e}") from None
    parts = text.split()
    ok = len(parts) >= 2 and parts[0] in ("ssh-rsa", "ssh-ed25519", "ecdsa-sha2-nistp256",
                                          "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521")
    if ok:
        try:
            base64.b64decode(parts[1], validate=True)
        except ValueError:
            ok = False
    if not ok or "PRIVATE KEY" in text:
        raise inv.error(key, f"{p} is not an OpenSSH public key line (ssh-ed25519 AAAA... or ssh-rsa AAAA...)")
    return {"public_key": (parts[0], parts[1]), "file": str(p)}
