"""The `provision:` inventory section. Every resource is optional: a section that
is absent (or null) is not managed. Names default to the guides' convention
`{project}-{env}-{resource}` (tasks/provision/spec.py); existing VPC, subnet and
hosted zone are referenced by id or tag, never created."""
from __future__ import annotations

from .schema_types import Bool, F, Int, List, Map, SchemaError, Str, Struct

NAME = r"[A-Za-z0-9][A-Za-z0-9_.\-]*"
REGION = Str(r"[a-z]{2}(-[a-z]+)+-\d", "an AWS region such as eu-west-1")
URL = Str(r"https?://.+", "an http(s) URL")
# The parts of every name: lowercase, since the S3 bucket name is built from them.
LOWER_NAME = Str(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?", "lowercase letters, digits and '-' (S3 bucket names allow no more)")
AWS_NAME = Str(r"[A-Za-z0-9][A-Za-z0-9_.+=@\-]{0,127}", "a name of letters, digits and _.+=@- (at most 128)")
BUCKET = Str(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]", "an S3 bucket name (3-63 lowercase letters, digits, '.', '-')")
CIDR = Str(r"(\d{1,3}\.){3}\d{1,3}/\d{1,2}", "an IPv4 CIDR such as 203.0.113.7/32")
TAG_VALUE = Str(r"[^\x00-\x1f]{0,256}", "a tag value (at most 256 printable characters)", non_empty=False)
TAGS = Map(TAG_VALUE, r"(?!aws:)[A-Za-z0-9 _.:/=+\-@]{1,128}", "a tag key (not starting with aws:)")


def _one_way(*keys):
    def check(value, path):
        given = [k for k in keys if value.get(k) not in (None, {}, "")]
        if len(given) != 1:
            raise SchemaError(path, f"expected exactly one of {', '.join(keys)}"
                              + (f" (got {' and '.join(given)})" if given else " (got none)"))
    return check


# An existing resource: by id, or by tags (`name` is the Name tag).
REF = Struct({
    "id": F(Str(r"(vpc|subnet)-[0-9a-f]+", "a VPC or subnet id such as subnet-0abc123")),
    "name": F(Str()),
    "tags": F(Map(TAG_VALUE)),
}, validator=_one_way("id", "name", "tags"), fill_default=False)

ZONE = Struct({
    "id": F(Str(r"(/hostedzone/)?[A-Z0-9]+", "a hosted zone id such as Z0123456789ABC")),
    "name": F(Str(r"[A-Za-z0-9.\-]+\.?", "a DNS zone name such as example.com")),
    "private": F(Bool()),
}, validator=_one_way("id", "name"), fill_default=False)

BUCKET_S = Struct({
    "name": F(BUCKET),
    "tags": F(TAGS, default={}),
}, fill_default=False)

ROLE = Struct({
    "name": F(AWS_NAME),
    "profile_name": F(AWS_NAME),
    # least privilege on the provisioned bucket only (the OTA guide's blob storage)
    "s3_actions": F(List(Str(r"s3:[A-Za-z*]+", "an S3 action such as s3:GetObject"), min_items=1),
                    default=["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket"]),
}, fill_default=False)

SECURITY_GROUP = Struct({
    "name": F(AWS_NAME),
    "description": F(Str(r"[A-Za-z0-9 ._\-:/()#,@\[\]+=&;{}!$*]{1,255}", "a description (letters, digits, spaces, ._-:/()#,@[]+=&;{}!$*)"),
                     default="fabship managed web host"),
    "public_ports": F(List(Int(1, 65535)), default=[80, 443]),
    "ssh_cidrs": F(List(CIDR, min_items=1, single_ok=True), required=True),
    "ssh_port": F(Int(1, 65535), default=22),
})

KEY_PAIR = Struct({
    "name": F(AWS_NAME),
    # imported, never generated: the private key stays where the operator keeps it
    "public_key_file": F(Str(), required=True),
})

AMI = Struct({
    "id": F(Str(r"ami-[0-9a-f]+", "an AMI id such as ami-0abc123")),
    # newest image whose name matches; {arch} is the architecture
    "name": F(Str(), default="al2023-ami-2023.*-kernel-*-{arch}"),
    "owner": F(Str(r"amazon|self|\d{12}", "amazon, self or an account id"), default="amazon"),
    "architecture": F(Str(r"x86_64|arm64", "x86_64 or arm64"), default="x86_64"),
})

INSTANCE = Struct({
    "name": F(AWS_NAME),
    "type": F(Str(r"[a-z0-9]+\.[a-z0-9]+", "an instance type such as t3.small"), default="t3.small"),
    "ami": F(AMI),
    "root_volume_size": F(Int(8, 16384), default=20),
    "root_volume_type": F(Str(r"gp3|gp2|io1|io2|standard", "gp3, gp2, io1, io2 or standard"), default="gp3"),
    "root_device": F(Str(r"/dev/[a-z0-9]+", "a device name such as /dev/xvda"), default="/dev/xvda"),
    "private_ip": F(Str(r"(\d{1,3}\.){3}\d{1,3}", "an IPv4 address")),
    "wait_timeout": F(Int(10), default=600),
}, fill_default=False)

DNS = Struct({
    "zone": F(ZONE, required=True),
    "record": F(Str(r"[A-Za-z0-9*][A-Za-z0-9.\-]*\.?", "a DNS name such as ota-dev.example.com"), required=True),
    "ttl": F(Int(1, 604800), default=300),
}, fill_default=False)

PROVISION = Struct({
    "project": F(LOWER_NAME, required=True),
    "env": F(LOWER_NAME),          # default: the inventory's `environment`
    "resource": F(LOWER_NAME, required=True),
    "region": F(REGION),           # default: hosts.ec2.region
    "profile": F(Str()),
    "endpoint_url": F(URL),
    "tags": F(TAGS, default={}),
    "vpc": F(REF),                 # default: the subnet's VPC
    "subnet": F(REF),
    "bucket": F(BUCKET_S),
    "role": F(ROLE),
    "security_group": F(SECURITY_GROUP),
    "key_pair": F(KEY_PAIR),
    "instance": F(INSTANCE),
    "eip": F(Struct({"name": F(AWS_NAME)}, fill_default=False)),
    "dns": F(DNS),
}, fill_default=False)
