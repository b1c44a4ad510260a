"""One class per resource kind (nine kinds: one module keeps their shared
lookup/plan/destroy shape side by side; each class is short). Each has
  lookup(clients, spec, known) -> State   read-only API calls (describe/get/list)
  plan(spec, state, known) -> [Change]     pure: what to create or repair, as API calls
  destroy(spec, state) -> [Change]         pure: what --destroy deletes (managed only)
`known` carries ids between resources (subnet_id, sg_id, instance_id ...): a real
value when the resource exists, a `Later` placeholder when a Change creates it
(filled from the API's answer when that Change is applied).

Ownership: a resource is managed when it carries all of spec.tags()'s fabship
tags with this inventory's project/env (Route53 records carry no tags: an owner
TXT record beside the A record marks them, as external-dns does). A resource
with our name but without those tags is a collision: plan refuses it, destroy
leaves it alone.
"""
from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Callable

from ..core.errors import FabshipError
from .spec import Spec, tag_dict


class ProvisionError(FabshipError):
    """A resource cannot be looked up, planned or changed: one line naming it."""


# -- changes ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Later:
    """A value a previous Change produces (e.g. the id of a group it creates)."""
    key: str

    def __repr__(self) -> str:
        return f"<{self.key}>"


@dataclass
class Change:
    service: str                    # boto3 client name: ec2, iam, s3, route53
    call: str                       # boto3 method, e.g. authorize_security_group_ingress
    args: dict
    what: str                       # what it does, for the report
    create: bool = False            # creates the resource (vs repairs it)
    capture: Callable[[dict], dict] | None = None  # API answer -> values for `known`
    run: Callable[[Any, dict], dict] | None = None  # custom (paged/waiting) executor: (client, args)

    @property
    def api(self) -> str:
        """The IAM action name, e.g. ec2:AuthorizeSecurityGroupIngress."""
        return f"{self.service}:{''.join(p.title() for p in self.call.split('_'))}"

    def render(self) -> str:
        return f"{self.api} {json.dumps(self.args, default=repr, sort_keys=True)}"


def resolve(value, known: dict):
    if isinstance(value, Later):
        got = known.get(value.key)
        if got is None or isinstance(got, Later):
            raise ProvisionError(f"internal: {value.key} is not known yet")
        return got
    if isinstance(value, dict):
        return {k: resolve(v, known) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, known) for v in value]
    return value


@dataclass
class State:
    exists: bool = False
    managed: bool = False
    id: str | None = None
    foreign: str = ""               # why an existing resource with our name is not ours
    info: dict = field(default_factory=dict)
    note: str = ""


def client_error(e) -> tuple[str, str]:
    err = getattr(e, "response", {}).get("Error", {})
    return str(err.get("Code", "")), str(err.get("Message", "")) or str(e)


def is_error(e, *codes: str) -> bool:
    import botocore.exceptions as bx

    return isinstance(e, bx.ClientError) and client_error(e)[0] in codes


def _missing_tags(want: dict, have: dict) -> dict:
    return {k: v for k, v in want.items() if have.get(k) != v}


def _collision(kind: str, name: str, state: State, spec: Spec) -> ProvisionError:
    return ProvisionError(
        f"{kind} {name}: {state.foreign or 'exists'} and is not managed by fabship for this inventory "
        f"(tags {spec.managed_desc} missing); refusing to adopt or change it: give provision a different "
        "name for it, or remove it")


class Resource:
    kind = "resource"
    key = ""                        # the spec attribute that enables it

    def __init__(self, spec: Spec):
        self.spec = spec

    @property
    def name(self) -> str:
        return getattr(self.spec, self.key)["name"]

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name}"

    def lookup(self, clients, known: dict) -> State:
        raise NotImplementedError

    def plan(self, state: State, known: dict) -> list[Change]:
        return []

    def destroy(self, state: State, opts: dict) -> list[Change]:
        return []

    def publish(self, state: State, known: dict) -> None:
        """Put this resource's ids into `known` (real or Later)."""


# -- network (existing; looked up only) ---------------------------------------------------

class Network(Resource):
    """The existing subnet and VPC, by id or tags. Never created or deleted."""
    kind = "network"

    @property
    def name(self) -> str:
        s = self.spec
        return " ".join(x for x in ((f"subnet {s.subnet.describe()}" if s.subnet else ""),
                                    (f"vpc {s.vpc.describe()}" if s.vpc else "")) if x)

    @property
    def label(self) -> str:
        return self.name

    def lookup(self, clients, known):
        ec2 = clients.get("ec2")
        s = self.spec
        info = {}
        if s.subnet:
            subnets = (ec2.describe_subnets(SubnetIds=[s.subnet.id]) if s.subnet.id
                       else ec2.describe_subnets(Filters=s.subnet.filters()))["Subnets"]
            sub = _exactly_one("subnet", s.subnet, subnets, "SubnetId", "provision.subnet")
            info.update(subnet_id=sub["SubnetId"], vpc_id=sub["VpcId"], subnet_az=sub.get("AvailabilityZone"))
        if s.vpc:
            vpcs = (ec2.describe_vpcs(VpcIds=[s.vpc.id]) if s.vpc.id
                    else ec2.describe_vpcs(Filters=s.vpc.filters()))["Vpcs"]
            vpc = _exactly_one("vpc", s.vpc, vpcs, "VpcId", "provision.vpc")
            if info.get("vpc_id") and info["vpc_id"] != vpc["VpcId"]:
                raise ProvisionError(f"provision.subnet: subnet {info['subnet_id']} is in {info['vpc_id']}, "
                                     f"not in provision.vpc {vpc['VpcId']}")
            info["vpc_id"] = vpc["VpcId"]
        return State(exists=True, managed=False, id=info.get("subnet_id") or info.get("vpc_id"), info=info,
                     note=", ".join(f"{k.split('_')[0]} {v}" for k, v in info.items() if k != "subnet_az"))

    def publish(self, state, known):
        known.update(state.info)


def _exactly_one(kind: str, ref, found: list, id_key: str, where: str) -> dict:
    if not found:
        raise ProvisionError(f"{where}: no {kind} matches {ref.describe()}")
    if len(found) > 1:
        ids = ", ".join(f[id_key] for f in found)
        raise ProvisionError(f"{where}: {len(found)} {kind}s match {ref.describe()} ({ids}); "
                             f"name one by id ({where}.id) or add a tag that tells them apart")
    return found[0]


def _lookup_id_error(e, kind: str, ref, where: str):
    raise ProvisionError(f"{where}: no {kind} {ref.describe()}: {client_error(e)[1]}") from None


# -- S3 bucket ------------------------------------------------------------------------

PUBLIC_ACCESS_BLOCK = {"BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True,
                       "RestrictPublicBuckets": True}


class Bucket(Resource):
    kind = "s3 bucket"
    key = "bucket"

    def lookup(self, clients, known):
        s3 = clients.get("s3")
        try:
            s3.head_bucket(Bucket=self.name)
        except Exception as e:
            code = client_error(e)[0]
            if code in ("404", "NoSuchBucket", "NotFound"):
                return State()
            if code in ("403", "AccessDenied", "Forbidden"):
                # bucket names are global: another account (or a policy) owns this one
                return State(exists=True, id=self.name, foreign="exists but this account may not read it")
            raise
        try:
            tags = tag_dict(s3.get_bucket_tagging(Bucket=self.name).get("TagSet"))
        except Exception as e:
            if not is_error(e, "NoSuchTagSet", "NoSuchTagSetError"):
                raise
            tags = {}
        try:
            pab = s3.get_public_access_block(Bucket=self.name)["PublicAccessBlockConfiguration"]
        except Exception as e:
            if not is_error(e, "NoSuchPublicAccessBlockConfiguration"):
                raise
            pab = {}
        listed = s3.list_objects_v2(Bucket=self.name, MaxKeys=1)
        return State(exists=True, managed=self.spec.managed(tags), id=self.name,
                     info={"tags": tags, "pab": pab, "empty": not listed.get("KeyCount")})

    def plan(self, state, known):
        name, spec = self.name, self.spec
        want_tags = spec.tags(name, spec.bucket["tags"])
        tagging = {"Bucket": name, "Tagging": {"TagSet": [{"Key": k, "Value": v} for k, v in want_tags.items()]}}
        pab = {"Bucket": name, "PublicAccessBlockConfiguration": dict(PUBLIC_ACCESS_BLOCK)}
        if not state.exists:
            create = {"Bucket": name}
            if spec.region != "us-east-1":  # us-east-1 refuses its own name as a constraint
                create["CreateBucketConfiguration"] = {"LocationConstraint": spec.region}
            return [Change("s3", "create_bucket", create, "create the bucket", create=True),
                    Change("s3", "put_public_access_block", pab, "block all public access", create=True),
                    Change("s3", "put_bucket_tagging", tagging, "tag it", create=True)]
        if not state.managed:
            raise _collision(self.kind, name, state, spec)
        out = []
        if any(state.info["pab"].get(k) is not True for k in PUBLIC_ACCESS_BLOCK):
            out.append(Change("s3", "put_public_access_block", pab, "block all public access again"))
        missing = _missing_tags(want_tags, state.info["tags"])
        if missing:
            # put_bucket_tagging replaces the set: keep tags someone else added
            merged = {**state.info["tags"], **want_tags}
            tagging["Tagging"]["TagSet"] = [{"Key": k, "Value": v} for k, v in merged.items()]
            out.append(Change("s3", "put_bucket_tagging", tagging, f"tags {', '.join(missing)}"))
        return out

    def publish(self, state, known):
        known["bucket"] = self.name

    def destroy(self, state, opts):
        if not state.exists or not state.managed:
            return []
        if not state.info.get("empty") and not opts.get("delete_bucket"):
            return []
        out = []
        if not state.info.get("empty"):
            out.append(Change("s3", "delete_objects", {"Bucket": self.name}, "delete every object (--delete-bucket)",
                              run=_empty_bucket))
        return out + [Change("s3", "delete_bucket", {"Bucket": self.name}, "delete the bucket")]


def _empty_bucket(s3, args):
    bucket = args["Bucket"]
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        objs = [{"Key": o["Key"], "VersionId": o["VersionId"]}
                for o in (page.get("Versions") or []) + (page.get("DeleteMarkers") or [])]
        if objs:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": objs, "Quiet": True})
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        objs = [{"Key": o["Key"]} for o in page.get("Contents") or []]
        if objs:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": objs, "Quiet": True})
    return {}


# -- IAM role + policy, instance profile ---------------------------------------------

ASSUME_EC2 = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}
POLICY_NAME = "fabship-s3-access"
BUCKET_LEVEL = ("s3:ListBucket", "s3:ListBucketVersions", "s3:GetBucketLocation")


def partition(region: str) -> str:
    return "aws-cn" if region.startswith("cn-") else "aws-us-gov" if region.startswith("us-gov-") else "aws"


def s3_policy(bucket: str, actions: list[str], region: str) -> dict:
    """Least privilege: object actions on the bucket's objects, listing on the bucket only."""
    arn = f"arn:{partition(region)}:s3:::{bucket}"
    obj = sorted(a for a in actions if a not in BUCKET_LEVEL)
    lvl = sorted(a for a in actions if a in BUCKET_LEVEL)
    stmts = []
    if obj:
        stmts.append({"Sid": "Objects", "Effect": "Allow", "Action": obj, "Resource": f"{arn}/*"})
    if lvl:
        stmts.append({"Sid": "Bucket", "Effect": "Allow", "Action": lvl, "Resource": arn})
    return {"Version": "2012-10-17", "Statement": stmts}


def _doc(value) -> dict:
    """IAM returns policy documents URL-encoded (boto3 decodes them; moto may not)."""
    if isinstance(value, str):
        return json.loads(urllib.parse.unquote(value))
    return value or {}


def _same_doc(a, b) -> bool:
    def norm(x):
        if isinstance(x, dict):
            return {k: norm(v) for k, v in x.items()}
        if isinstance(x, list):
            items = [norm(v) for v in x]
            return items[0] if len(items) == 1 else sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
        return x
    return json.dumps(norm(_doc(a)), sort_keys=True) == json.dumps(norm(_doc(b)), sort_keys=True)


class Role(Resource):
    kind = "iam role"
    key = "role"

    def lookup(self, clients, known):
        iam = clients.get("iam")
        try:
            role = iam.get_role(RoleName=self.name)["Role"]
        except Exception as e:
            if is_error(e, "NoSuchEntity"):
                return State()
            raise
        tags = tag_dict(role.get("Tags") or iam.list_role_tags(RoleName=self.name).get("Tags"))
        try:
            policy = iam.get_role_policy(RoleName=self.name, PolicyName=POLICY_NAME)["PolicyDocument"]
        except Exception as e:
            if not is_error(e, "NoSuchEntity"):
                raise
            policy = None
        return State(exists=True, managed=self.spec.managed(tags), id=role["Arn"],
                     info={"tags": tags, "assume": role.get("AssumeRolePolicyDocument"), "policy": policy})

    def _policy(self):
        return s3_policy(self.spec.bucket["name"], self.spec.role["s3_actions"], self.spec.region)

    def plan(self, state, known):
        name, spec = self.name, self.spec
        put = Change("iam", "put_role_policy", {"RoleName": name, "PolicyName": POLICY_NAME,
                                                "PolicyDocument": json.dumps(self._policy())},
                     f"least-privilege policy {POLICY_NAME} on {spec.bucket['name']}")
        if not state.exists:
            put.create = True
            return [Change("iam", "create_role", {"RoleName": name, "AssumeRolePolicyDocument": json.dumps(ASSUME_EC2),
                                                  "Description": f"fabship: {spec.base} instance role",
                                                  "Tags": spec.tag_list(name)}, "create the role (EC2 may assume it)",
                           create=True), put]
        if not state.managed:
            raise _collision(self.kind, name, state, spec)
        out = []
        if not _same_doc(state.info["assume"], ASSUME_EC2):
            out.append(Change("iam", "update_assume_role_policy",
                              {"RoleName": name, "PolicyDocument": json.dumps(ASSUME_EC2)}, "trust EC2 only again"))
        if state.info["policy"] is None or not _same_doc(state.info["policy"], self._policy()):
            out.append(put)
        missing = _missing_tags(spec.tags(name), state.info["tags"])
        if missing:
            out.append(Change("iam", "tag_role", {"RoleName": name, "Tags": [{"Key": k, "Value": v} for k, v in missing.items()]},
                              f"tags {', '.join(missing)}"))
        return out

    def destroy(self, state, opts):
        if not state.exists or not state.managed:
            return []
        return [Change("iam", "delete_role", {"RoleName": self.name}, "delete the role and its policies", run=_delete_role)]


def _delete_role(iam, args):
    name = args["RoleName"]
    for p in iam.list_role_policies(RoleName=name).get("PolicyNames") or []:
        iam.delete_role_policy(RoleName=name, PolicyName=p)
    for p in iam.list_attached_role_policies(RoleName=name).get("AttachedPolicies") or []:
        iam.detach_role_policy(RoleName=name, PolicyArn=p["PolicyArn"])
    for prof in iam.list_instance_profiles_for_role(RoleName=name).get("InstanceProfiles") or []:
        iam.remove_role_from_instance_profile(InstanceProfileName=prof["InstanceProfileName"], RoleName=name)
    return iam.delete_role(RoleName=name)


class InstanceProfile(Resource):
    kind = "iam instance profile"
    key = "role"

    @property
    def name(self) -> str:
        return self.spec.role["profile_name"]

    def lookup(self, clients, known):
        iam = clients.get("iam")
        try:
            prof = iam.get_instance_profile(InstanceProfileName=self.name)["InstanceProfile"]
        except Exception as e:
            if is_error(e, "NoSuchEntity"):
                return State()
            raise
        tags = tag_dict(prof.get("Tags"))
        return State(exists=True, managed=self.spec.managed(tags), id=prof["Arn"],
                     info={"tags": tags, "roles": [r["RoleName"] for r in prof.get("Roles") or []]})

    def plan(self, state, known):
        name, role, spec = self.name, self.spec.role["name"], self.spec
        add = Change("iam", "add_role_to_instance_profile", {"InstanceProfileName": name, "RoleName": role},
                     f"give it role {role}")
        if not state.exists:
            add.create = True
            return [Change("iam", "create_instance_profile", {"InstanceProfileName": name, "Tags": spec.tag_list(name)},
                           "create the instance profile", create=True), add]
        if not state.managed:
            raise _collision(self.kind, name, state, spec)
        out = [Change("iam", "remove_role_from_instance_profile", {"InstanceProfileName": name, "RoleName": r},
                      f"remove role {r}") for r in state.info["roles"] if r != role]
        if role not in state.info["roles"]:
            out.append(add)
        missing = _missing_tags(spec.tags(name), state.info["tags"])
        if missing:
            out.append(Change("iam", "tag_instance_profile", {"InstanceProfileName": name, "Tags": [
                {"Key": k, "Value": v} for k, v in missing.items()]}, f"tags {', '.join(missing)}"))
        return out

    def publish(self, state, known):
        known["instance_profile"] = self.name

    def destroy(self, state, opts):
        if not state.exists or not state.managed:
            return []
        out = [Change("iam", "remove_role_from_instance_profile", {"InstanceProfileName": self.name, "RoleName": r},
                      f"remove role {r}") for r in state.info["roles"]]
        return out + [Change("iam", "delete_instance_profile", {"InstanceProfileName": self.name},
                             "delete the instance profile")]


# -- security group -----------------------------------------------------------------

def flat_rules(perms: list[dict]) -> set[tuple]:
    """IpPermissions as (protocol, from, to, kind, source) tuples, one per source."""
    out = set()
    for p in perms or []:
        proto, lo, hi = str(p.get("IpProtocol")), p.get("FromPort"), p.get("ToPort")
        if proto == "-1":
            lo = hi = None
        for r in p.get("IpRanges") or []:
            out.add((proto, lo, hi, "cidr", r["CidrIp"]))
        for r in p.get("Ipv6Ranges") or []:
            out.add((proto, lo, hi, "cidr6", r["CidrIpv6"]))
        for r in p.get("UserIdGroupPairs") or []:
            out.add((proto, lo, hi, "group", r["GroupId"]))
        for r in p.get("PrefixListIds") or []:
            out.add((proto, lo, hi, "prefix", r["PrefixListId"]))
    return out


def permission(rule: tuple) -> dict:
    proto, lo, hi, kind, src = rule
    p: dict = {"IpProtocol": proto}
    if lo is not None:
        p.update(FromPort=lo, ToPort=hi)
    key, item = {"cidr": ("IpRanges", "CidrIp"), "cidr6": ("Ipv6Ranges", "CidrIpv6"),
                 "group": ("UserIdGroupPairs", "GroupId"), "prefix": ("PrefixListIds", "PrefixListId")}[kind]
    p[key] = [{item: src}]
    return p


def rule_text(rule: tuple) -> str:
    proto, lo, hi, kind, src = rule
    ports = "all" if lo is None else (str(lo) if lo == hi else f"{lo}-{hi}")
    return f"{ports}/{proto if proto != '-1' else 'any'} from {src}"


class SecurityGroup(Resource):
    kind = "security group"
    key = "security_group"

    def wanted_rules(self) -> set[tuple]:
        g = self.spec.security_group
        rules = {("tcp", p, p, "cidr", "0.0.0.0/0") for p in g["public_ports"]}
        rules |= {("tcp", g["ssh_port"], g["ssh_port"], "cidr", c) for c in g["ssh_cidrs"]}
        return rules

    def lookup(self, clients, known):
        ec2 = clients.get("ec2")
        groups = ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": [self.name]},
                                                       {"Name": "vpc-id", "Values": [known["vpc_id"]]}])["SecurityGroups"]
        if not groups:
            return State()
        g = groups[0]
        tags = tag_dict(g.get("Tags"))
        return State(exists=True, managed=self.spec.managed(tags), id=g["GroupId"],
                     foreign=f"exists ({g['GroupId']} in {known['vpc_id']})",
                     info={"tags": tags, "rules": flat_rules(g.get("IpPermissions"))})

    def plan(self, state, known):
        name, spec = self.name, self.spec
        want = self.wanted_rules()
        if not state.exists:
            gid = Later("sg_id")
            return [Change("ec2", "create_security_group", {
                "GroupName": name, "Description": spec.security_group["description"], "VpcId": known["vpc_id"],
                "TagSpecifications": [{"ResourceType": "security-group", "Tags": spec.tag_list(name)}]},
                "create the group", create=True, capture=lambda r: {"sg_id": r["GroupId"]}),
                Change("ec2", "authorize_security_group_ingress", {
                    "GroupId": gid, "IpPermissions": [permission(r) for r in sorted(want, key=str)]},
                    "allow " + "; ".join(rule_text(r) for r in sorted(want, key=str)), create=True)]
        if not state.managed:
            raise _collision(self.kind, name, state, spec)
        out = []
        have = state.info["rules"]
        missing, extra = sorted(want - have, key=str), sorted(have - want, key=str)
        if missing:
            out.append(Change("ec2", "authorize_security_group_ingress", {
                "GroupId": state.id, "IpPermissions": [permission(r) for r in missing]},
                "allow " + "; ".join(rule_text(r) for r in missing)))
        if extra:
            out.append(Change("ec2", "revoke_security_group_ingress", {
                "GroupId": state.id, "IpPermissions": [permission(r) for r in extra]},
                "revoke " + "; ".join(rule_text(r) for r in extra)))
        missing_tags = _missing_tags(spec.tags(name), state.info["tags"])
        if missing_tags:
            out.append(_create_tags(state.id, missing_tags))
        return out

    def publish(self, state, known):
        known["sg_id"] = state.id if state.exists else Later("sg_id")

    def destroy(self, state, opts):
        if not state.exists or not state.managed:
            return []
        return [Change("ec2", "delete_security_group", {"GroupId": state.id}, "delete the group", run=_delete_sg)]


def _delete_sg(ec2, args):
    """A just-terminated instance's network interface lets go of its group a little later."""
    import time

    deadline = time.monotonic() + 120
    while True:
        try:
            return ec2.delete_security_group(**args)
        except Exception as e:
            if not is_error(e, "DependencyViolation") or time.monotonic() > deadline:
                raise
            time.sleep(5)


def _create_tags(rid: str, tags: dict) -> Change:
    return Change("ec2", "create_tags", {"Resources": [rid], "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]},
                  f"tags {', '.join(tags)}")


# -- key pair -----------------------------------------------------------------------

class KeyPair(Resource):
    kind = "key pair"
    key = "key_pair"

    def lookup(self, clients, known):
        ec2 = clients.get("ec2")
        try:
            kp = ec2.describe_key_pairs(KeyNames=[self.name], IncludePublicKey=True)["KeyPairs"][0]
        except Exception as e:
            if is_error(e, "InvalidKeyPair.NotFound"):
                return State()
            raise
        tags = tag_dict(kp.get("Tags"))
        pub = (kp.get("PublicKey") or "").split()
        return State(exists=True, managed=self.spec.managed(tags), id=kp.get("KeyPairId") or self.name,
                     info={"tags": tags, "public_key": tuple(pub[:2]) if len(pub) >= 2 else None})

    def plan(self, state, known):
        name, spec = self.name, self.spec
        kp = spec.key_pair
        if not state.exists:
            line = f"{kp['public_key'][0]} {kp['public_key'][1]} {name}"
            return [Change("ec2", "import_key_pair", {
                "KeyName": name, "PublicKeyMaterial": line.encode(),
                "TagSpecifications": [{"ResourceType": "key-pair", "Tags": spec.tag_list(name)}]},
                f"import {kp['file']}", create=True)]
        if not state.managed:
            raise _collision(self.kind, name, state, spec)
        have = state.info["public_key"]
        if have and have[1] != kp["public_key"][1]:
            raise ProvisionError(f"{self.label}: holds a different public key than {kp['file']}; AWS cannot "
                                 "replace a key pair's key: destroy it (or name another key pair) and re-run")
        missing = _missing_tags(spec.tags(name), state.info["tags"])
        return [_create_tags(state.id, missing)] if missing and state.id.startswith("key-") else []

    def publish(self, state, known):
        known["key_name"] = self.name

    def destroy(self, state, opts):
        if not state.exists or not state.managed:
            return []
        return [Change("ec2", "delete_key_pair", {"KeyName": self.name}, "delete the key pair")]


# -- instance ------------------------------------------------------------------------

LIVE_STATES = ["pending", "running", "stopping", "stopped"]


class Instance(Resource):
    kind = "ec2 instance"
    key = "instance"

    def lookup(self, clients, known):
        ec2 = clients.get("ec2")
        found = []
        for page in ec2.get_paginator("describe_instances").paginate(Filters=[
                {"Name": "tag:Name", "Values": [self.name]},
                {"Name": "instance-state-name", "Values": LIVE_STATES}]):
            for res in page.get("Reservations") or []:
                found.extend(res.get("Instances") or [])
        mine = [i for i in found if self.spec.managed(tag_dict(i.get("Tags")))]
        others = [i["InstanceId"] for i in found if i not in mine]
        if others:
            # discovery finds hosts by this Name tag: a second instance would become a second host
            return State(exists=True, id=others[0], foreign=f"exists ({', '.join(others)})")
        if len(mine) > 1:
            raise ProvisionError(f"{self.label}: {len(mine)} managed instances carry this name "
                                 f"({', '.join(i['InstanceId'] for i in mine)}); terminate the extra one(s)")
        if not mine:
            return State(info={} if known.get("_destroy") else {"image": self._image(ec2)})
        i = mine[0]
        return State(exists=True, managed=True, id=i["InstanceId"], info={
            "tags": tag_dict(i.get("Tags")), "state": i["State"]["Name"], "type": i.get("InstanceType"),
            "groups": [g["GroupId"] for g in i.get("SecurityGroups") or []],
            "profile": (i.get("IamInstanceProfile") or {}).get("Arn", ""), "subnet": i.get("SubnetId"),
            "private_ip": i.get("PrivateIpAddress"), "public_ip": i.get("PublicIpAddress")})

    def _image(self, ec2) -> dict:
        """The image to launch: the AMI id, or the newest image matching the name pattern."""
        ami = self.spec.instance["ami"]
        where = "provision.instance.ami"
        if ami.get("id"):
            try:
                images = ec2.describe_images(ImageIds=[ami["id"]])["Images"]
            except Exception as e:
                if not is_error(e, "InvalidAMIID.NotFound", "InvalidAMIID.Malformed"):
                    raise
                images = []
            if not images:
                raise ProvisionError(f"{where}.id: no image {ami['id']} in {self.spec.region}")
            return images[0]
        pattern = ami["name"].replace("{arch}", ami["architecture"])
        images = ec2.describe_images(Owners=[ami["owner"]], Filters=[
            {"Name": "name", "Values": [pattern]}, {"Name": "architecture", "Values": [ami["architecture"]]},
            {"Name": "state", "Values": ["available"]}])["Images"]
        if not images:
            raise ProvisionError(f"{where}: no image matches name={pattern} owner={ami['owner']} "
                                 f"architecture={ami['architecture']} in {self.spec.region}")
        return max(images, key=lambda i: (i.get("CreationDate") or "", i.get("Name") or ""))

    def plan(self, state, known):
        name, spec, i = self.name, self.spec, self.spec.instance
        if state.exists and not state.managed:
            raise _collision(self.kind, name, state, spec)
        if not state.exists:
            image = state.info["image"]
            args = {
                "ImageId": image["ImageId"], "InstanceType": i["type"], "MinCount": 1, "MaxCount": 1,
                "SubnetId": known["subnet_id"],
                "BlockDeviceMappings": [{"DeviceName": image.get("RootDeviceName") or "/dev/xvda", "Ebs": {
                    "VolumeSize": i["root_volume_size"], "VolumeType": i["root_volume_type"],
                    "DeleteOnTermination": True, "Encrypted": True}}],
                "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
                "TagSpecifications": [{"ResourceType": "instance", "Tags": spec.tag_list(name)},
                                      {"ResourceType": "volume", "Tags": spec.tag_list(f"{name}-root")}],
            }
            if "sg_id" in known:
                args["SecurityGroupIds"] = [known["sg_id"]]
            if "key_name" in known:
                args["KeyName"] = known["key_name"]
            if "instance_profile" in known:
                args["IamInstanceProfile"] = {"Name": known["instance_profile"]}
            if i.get("private_ip"):
                args["PrivateIpAddress"] = i["private_ip"]
            return [Change("ec2", "run_instances", args,
                           f"launch {i['type']} from {image['ImageId']} ({image.get('Name', '')}), "
                           f"{i['root_volume_size']} GiB {i['root_volume_type']}", create=True,
                           capture=lambda r: {"instance_id": r["Instances"][0]["InstanceId"]},
                           run=_run_instances)]
        out = []
        info = state.info
        if info["state"] in ("stopped", "stopping"):
            out.append(Change("ec2", "start_instances", {"InstanceIds": [state.id]}, f"start it (it is {info['state']})"))
        missing = _missing_tags(spec.tags(name), info["tags"])
        if missing:
            out.append(_create_tags(state.id, missing))
        sg = known.get("sg_id")
        if sg and sg not in info["groups"]:
            out.append(Change("ec2", "modify_instance_attribute", {"InstanceId": state.id, "Groups": info["groups"] + [sg]},
                              f"attach security group {sg if isinstance(sg, str) else spec.security_group['name']}"))
        if "instance_profile" in known and f"instance-profile/{known['instance_profile']}" not in info["profile"]:
            if info["profile"]:
                state.note = f"has instance profile {info['profile']}, not {known['instance_profile']} (left as it is)"
            else:
                out.append(Change("ec2", "associate_iam_instance_profile", {
                    "InstanceId": state.id, "IamInstanceProfile": {"Name": known["instance_profile"]}},
                    f"attach instance profile {known['instance_profile']}"))
        if info["type"] != i["type"]:
            state.note = (f"type is {info['type']}, the inventory says {i['type']}: left as it is "
                          "(a type change needs a stop; do it by hand)")
        return out

    def publish(self, state, known):
        known["instance_id"] = state.id if state.exists else Later("instance_id")
        field = "private_ip" if self.spec.address_field == "private_ip" else "public_ip"
        ip = state.info.get(field) if state.exists else None
        known["instance_ip"] = ip or Later("instance_ip")

    def destroy(self, state, opts):
        if not state.exists or not state.managed:
            return []
        return [Change("ec2", "terminate_instances", {"InstanceIds": [state.id]}, "terminate it and wait",
                       run=_terminate_and_wait)]


def _run_instances(ec2, args):
    """A new instance profile takes a few seconds to become usable by EC2 (IAM is
    eventually consistent): retry that one refusal, briefly."""
    import time

    deadline = time.monotonic() + 90
    while True:
        try:
            return ec2.run_instances(**args)
        except Exception as e:
            code, msg = client_error(e)
            if not (code == "InvalidParameterValue" and "iamInstanceProfile" in msg.replace(" ", "")) \
                    or time.monotonic() > deadline:
                raise
            time.sleep(5)


def _terminate_and_wait(ec2, args, timeout: float = 600):
    """Terminate, then wait: its security group goes next and must no longer be in use."""
    import time

    ec2.terminate_instances(**args)
    t0, pause = time.monotonic(), 0.5
    while True:
        res = ec2.describe_instances(InstanceIds=args["InstanceIds"])["Reservations"]
        states = {i["State"]["Name"] for r in res for i in r["Instances"]}
        if states <= {"terminated"}:
            return {}
        if time.monotonic() - t0 > timeout:
            raise ProvisionError(f"{', '.join(args['InstanceIds'])}: still {', '.join(sorted(states))} after "
                                 f"{timeout:.0f} s; re-run --destroy to finish")
        time.sleep(pause)
        pause = min(pause * 2, 10)


# -- Elastic IP -----------------------------------------------------------------------

class ElasticIp(Resource):
    kind = "elastic ip"
    key = "eip"

    def lookup(self, clients, known):
        ec2 = clients.get("ec2")
        found = ec2.describe_addresses(Filters=[{"Name": "tag:Name", "Values": [self.name]}])["Addresses"]
        mine = [a for a in found if self.spec.managed(tag_dict(a.get("Tags")))]
        if found and not mine:
            return State(exists=True, id=found[0].get("AllocationId"),
                         foreign=f"exists ({found[0].get('PublicIp')}, {found[0].get('AllocationId')})")
        if len(mine) > 1:
            raise ProvisionError(f"{self.label}: {len(mine)} managed addresses carry this name "
                                 f"({', '.join(a['PublicIp'] for a in mine)}); release the extra one(s)")
        if not mine:
            return State()
        a = mine[0]
        return State(exists=True, managed=True, id=a["AllocationId"], note=a.get("PublicIp", ""), info={
            "tags": tag_dict(a.get("Tags")), "ip": a.get("PublicIp"), "instance": a.get("InstanceId"),
            "association": a.get("AssociationId")})

    def plan(self, state, known):
        name, spec = self.name, self.spec
        assoc = Change("ec2", "associate_address", {"AllocationId": state.id or Later("eip_id"),
                                                    "InstanceId": known["instance_id"], "AllowReassociation": True},
                       "associate it with the instance")
        if not state.exists:
            assoc.create = True
            return [Change("ec2", "allocate_address", {"Domain": "vpc", "TagSpecifications": [
                {"ResourceType": "elastic-ip", "Tags": spec.tag_list(name)}]}, "allocate the address", create=True,
                capture=lambda r: {"eip_id": r["AllocationId"], "eip_ip": r["PublicIp"]}), assoc]
        if not state.managed:
            raise _collision(self.kind, name, state, spec)
        out = []
        if state.info["instance"] != known["instance_id"]:
            out.append(assoc)
        missing = _missing_tags(spec.tags(name), state.info["tags"])
        if missing:
            out.append(_create_tags(state.id, missing))
        return out

    def publish(self, state, known):
        known["eip_ip"] = state.info["ip"] if state.exists else Later("eip_ip")

    def destroy(self, state, opts):
        if not state.exists or not state.managed:
            return []
        out = []
        if state.info.get("association"):
            out.append(Change("ec2", "disassociate_address", {"AssociationId": state.info["association"]},
                              "disassociate it"))
        return out + [Change("ec2", "release_address", {"AllocationId": state.id}, "release it")]


# -- Route53 A record ----------------------------------------------------------------

OWNER_PREFIX = "_fabship."


class DnsRecord(Resource):
    kind = "dns record"
    key = "dns"

    @property
    def name(self) -> str:
        return self.spec.dns["record"].rstrip(".")

    def owner_value(self) -> str:
        return f'"fabship project={self.spec.project} env={self.spec.env}"'

    def lookup(self, clients, known):
        r53 = clients.get("route53")
        zone = self.spec.dns["zone"]
        if zone.get("id"):
            try:
                zid = r53.get_hosted_zone(Id=zone["id"])["HostedZone"]["Id"].rsplit("/", 1)[-1]
            except Exception as e:
                if is_error(e, "NoSuchHostedZone"):
                    raise ProvisionError(f"provision.dns.zone.id: no hosted zone {zone['id']}") from None
                raise
        else:
            zones = []
            for page in r53.get_paginator("list_hosted_zones").paginate():
                for z in page.get("HostedZones") or []:
                    private = bool((z.get("Config") or {}).get("PrivateZone"))
                    if z["Name"].lower() == zone["name"] and (zone.get("private") is None or private == zone["private"]):
                        zones.append(z)
            if not zones:
                raise ProvisionError(f"provision.dns.zone.name: no hosted zone {zone['name'].rstrip('.')}")
            if len(zones) > 1:
                ids = ", ".join(z["Id"].rsplit("/", 1)[-1] for z in zones)
                raise ProvisionError(f"provision.dns.zone.name: {len(zones)} hosted zones are named "
                                     f"{zone['name'].rstrip('.')} ({ids}); set provision.dns.zone.id "
                                     "(or zone.private)")
            zid = zones[0]["Id"].rsplit("/", 1)[-1]
        record = self.spec.dns["record"]
        a = self._record(r53, zid, record, "A")
        owner = self._record(r53, zid, OWNER_PREFIX + record, "TXT")
        ours = bool(owner) and any(v["Value"] == self.owner_value() for v in owner.get("ResourceRecords") or [])
        return State(exists=bool(a), managed=ours, id=zid, foreign="exists (with no fabship owner record)",
                     info={"a": a, "owner": owner})

    @staticmethod
    def _record(r53, zid, name, rtype):
        got = r53.list_resource_record_sets(HostedZoneId=zid, StartRecordName=name, StartRecordType=rtype,
                                            MaxItems="1").get("ResourceRecordSets") or []
        if got and got[0]["Name"].lower() == name and got[0]["Type"] == rtype:
            return got[0]
        return None

    def _sets(self, ip, action="UPSERT"):
        record = self.spec.dns["record"]
        return [{"Action": action, "ResourceRecordSet": {"Name": record, "Type": "A", "TTL": self.spec.dns["ttl"],
                                                          "ResourceRecords": [{"Value": ip}]}},
                {"Action": action, "ResourceRecordSet": {"Name": OWNER_PREFIX + record, "Type": "TXT",
                                                          "TTL": self.spec.dns["ttl"],
                                                          "ResourceRecords": [{"Value": self.owner_value()}]}}]

    def plan(self, state, known):
        ip = known.get("eip_ip") if self.spec.eip else known.get("instance_ip")
        if ip is None:
            ip = Later("instance_ip")
        if state.exists and not state.managed:
            raise _collision(self.kind, self.name, state, self.spec)
        change = Change("route53", "change_resource_record_sets",
                        {"HostedZoneId": state.id, "ChangeBatch": {"Comment": "fabship provision",
                                                                   "Changes": self._sets(ip)}},
                        f"A {ip} (ttl {self.spec.dns['ttl']}) + owner record {OWNER_PREFIX}{self.name}")
        if not state.exists:
            change.create = True
            return [change]
        a = state.info["a"]
        values = [v["Value"] for v in a.get("ResourceRecords") or []]
        if values != [ip] or a.get("TTL") != self.spec.dns["ttl"]:
            change.what = f"point it at {ip} (was {', '.join(values) or 'an alias'})"
            return [change]
        return []

    def destroy(self, state, opts):
        if not state.managed:
            return []
        changes = [{"Action": "DELETE", "ResourceRecordSet": r} for r in (state.info["a"], state.info["owner"]) if r]
        return [Change("route53", "change_resource_record_sets", {
            "HostedZoneId": state.id, "ChangeBatch": {"Comment": "fabship provision --destroy", "Changes": changes}},
            "delete the A record and its owner record")]


# Dependency order: each resource may use what the ones before it published.
ORDER = [Network, Bucket, Role, InstanceProfile, SecurityGroup, KeyPair, Instance, ElasticIp, DnsRecord]


def resources_for(spec: Spec) -> list[Resource]:
    out = []
    for cls in ORDER:
        if cls is Network:
            if spec.subnet or spec.vpc:
                out.append(cls(spec))
        elif getattr(spec, cls.key) is not None:
            out.append(cls(spec))
    return out
