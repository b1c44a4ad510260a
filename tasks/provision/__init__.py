"""`fab provision`: the guides' per-host AWS infrastructure, idempotently (issue 14).

Layers, each testable alone:
  schema.py     the `provision:` inventory section (types, defaults)
  spec.py       the validated, typed config: names `{project}-{env}-{resource}`, tags, references
  resources.py  per resource kind: lookup (read-only API calls) -> state, plan (pure) -> [Change]
  flow.py       ordered resources, dry-run plan, apply with the report, destroy, wait for the host
  hostkeys.py   cloud-init's host key block in the console output vs the key the host presents

boto3 is imported lazily (through tasks.config.discovery.ec2_client), as for EC2 discovery.
"""
