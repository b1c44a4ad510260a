"""`fab provision`: look every resource up (read-only), plan every change (pure;
collisions and bad references refuse here, before anything is written), then
apply in dependency order and report per resource ok/changed/created. Then wait
for the instance and its SSH, and trust its host key only when the console
output vouches for it. `--destroy` deletes the managed resources in reverse
order after --yes."""
from __future__ import annotations

import time

from ..core.errors import ConfigError, FabshipError
from .resources import (
    Bucket,
    Change,
    ElasticIp,
    Instance,
    Network,
    ProvisionError,
    Resource,
    State,
    client_error,
    resolve,
    resources_for,
)
from .spec import Spec, build_spec

DENIED = ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "UnauthorizedAccess",
          "InvalidClientTokenId", "AuthFailure", "403")


class Clients:
    """boto3 clients, one per service, built by discovery's ec2_client (standard
    credential chain, explicit region, endpoint_url / AWS_ENDPOINT_URL*)."""

    def __init__(self, spec: Spec):
        self.spec = spec
        self._c: dict = {}

    def get(self, service: str):
        if service not in self._c:
            from ..config.discovery import ec2_client

            self._c[service] = ec2_client(self.spec.client, service, where="provision")
        return self._c[service]


def say(text: str) -> None:
    print(text, flush=True)


def api_failure(label: str, e: Exception, api: str | None = None) -> str:
    """One line for an API error, naming the resource, the call and what is missing."""
    import botocore.exceptions as bx

    if isinstance(e, bx.ClientError):
        code, msg = client_error(e)
        op = api or f"{e.operation_name}"
        msg = msg.split(" Encoded authorization failure message")[0][:300]
        if code in DENIED:
            return f"{label}: permission denied for {op} ({code}: {msg}); grant it to these credentials"
        return f"{label}: {op} refused: {code}: {msg}"
    if isinstance(e, bx.NoCredentialsError):
        return f"{label}: no AWS credentials found (env vars, ~/.aws profile or instance role)"
    if isinstance(e, bx.EndpointConnectionError):
        return f"{label}: cannot reach the AWS API: {e}"
    if isinstance(e, bx.WaiterError):
        return f"{label}: {api or 'waiting'}: {e}"
    if isinstance(e, bx.BotoCoreError):
        return f"{label}: {e}"
    if type(e).__module__.startswith("botocore"):  # e.g. an answer that is no XML (a 500 page)
        first = (str(e).splitlines() or [""])[0][:200]
        return f"{label}: {api or 'the API call'} failed: {type(e).__name__}: {first}"
    raise e


def _aws(label: str, fn, api: str | None = None):

    try:
        return fn()
    except FabshipError:
        raise
    except Exception as e:  # botocore's error types; api_failure re-raises anything else (a bug)
        raise ProvisionError(api_failure(label, e, api)) from None


class Report:
    def __init__(self, dry_run: bool):
        self.dry_run = dry_run
        self.rows: list[list[str]] = []
        self.done: list[str] = []      # "created X" / "changed X": for the failure line

    def line(self, status: str, res: Resource, note: str = "") -> None:
        say(f"{status:<14} {res.label}" + (f": {note}" if note else ""))

    def row(self, res: Resource, rid, status: str, note: str = "") -> None:
        self.rows.append([res.kind, res.name if not isinstance(res, Network) else "-",
                          rid if isinstance(rid, str) else "-", status, note])

    def table(self, title: str) -> None:
        from ..core.runner import print_table

        print_table(["RESOURCE", "NAME", "ID", "RESULT", "NOTE"], self.rows, title=title)

    def counts(self) -> str:
        c = {}
        for r in self.rows:
            c[r[3]] = c.get(r[3], 0) + 1
        return ", ".join(f"{n} {s}" for s, n in c.items())


def provision(inventory=None, set=(), verbose=0, dry_run=False, destroy=False, yes=False, delete_bucket=False,
              then_bootstrap=False, gate=True, env_file=None, parallel=10) -> None:
    from ..config.inventory import load_inventory

    inv = load_inventory(inventory, overrides=list(set or ()))
    spec = build_spec(inv)
    res = resources_for(spec)
    if not [r for r in res if not isinstance(r, Network)]:
        raise ConfigError(spec.file, "provision", "names no resource to manage (bucket, role, security_group, "
                                                  "key_pair, instance, eip, dns)")
    if then_bootstrap and (destroy or spec.instance is None):
        raise ConfigError("command line", "--then-bootstrap",
                          "needs provision.instance and no --destroy" if not destroy else "cannot go with --destroy")
    clients = Clients(spec)
    if destroy:
        return run_destroy(inv, spec, clients, res, dry_run=dry_run, yes=yes, delete_bucket=delete_bucket,
                           verbose=verbose)
    report = Report(dry_run)
    known: dict = {}
    states: list[State] = []
    for r in res:  # read-only: a bad reference or a collision stops the run before any write
        st = _aws(r.label, lambda r=r: r.lookup(clients, known))
        r.publish(st, known)
        states.append(st)
    plans = [(r, st, r.plan(st, known)) for r, st in zip(res, states)]
    t0 = time.monotonic()
    for r, st, changes in plans:
        if not changes:
            rid = st.id
            if isinstance(r, Network):
                report.line("ok", r, st.note)
                report.row(r, rid, "ok", st.note)
            else:
                if verbose or st.note:
                    report.line("ok", r, st.note)
                report.row(r, rid, "ok", st.note)
            continue
        created = any(c.create for c in changes)
        status = ("would create" if created else "would change") if dry_run else ("created" if created else "changed")
        if dry_run:
            report.line(status, r, "; ".join(c.what for c in changes))
            for c in changes:
                say(f"  would call {c.render()}")
            report.row(r, st.id, status, st.note)
            continue
        _apply(r, changes, known, report, clients)
        if isinstance(r, Instance):
            _wait_running(clients, spec, known, r)
        rid = st.id or known.get({"Instance": "instance_id", "SecurityGroup": "sg_id",
                                  "ElasticIp": "eip_id"}.get(type(r).__name__, ""), r.name)
        report.line(status, r, _filled("; ".join(c.what for c in changes), known) + (f" ({st.note})" if st.note else ""))
        report.row(r, rid if isinstance(rid, str) else "-", status, st.note)
    title = f"provision{' (dry run)' if dry_run else ''}: {spec.base} in {spec.region} ({time.monotonic() - t0:.1f}s)"
    if spec.instance is None:
        report.table(title)
        say(f"provision: {report.counts()}")
        return
    if dry_run:
        report.table(title)
        say(f"provision: {report.counts()}; then: wait for {spec.instance['name']} and its SSH, and record its "
            f"host key in {spec.known_hosts} only if the console output shows it")
        return
    host = then_a_host(inv, spec, clients, known, report)
    report.table(title)
    say(f"provision: {report.counts()}; host {host.name} ({host.address}) is ready for fab bootstrap")
    return host  # the task chains `--then-bootstrap` (tasks/cli/namespace.py): provision sits below cli


def _apply(r: Resource, changes: list[Change], known: dict, report: Report, clients) -> None:
    for c in changes:
        try:
            args = resolve(c.args, known)
            client = clients.get(c.service)
            resp = c.run(client, args) if c.run else getattr(client, c.call)(**args)
        except FabshipError as e:
            raise ProvisionError(_failed(r, str(e), report)) from None
        except Exception as e:  # botocore's error types; anything else is a bug and goes up
            raise ProvisionError(_failed(r, api_failure(r.label, e, c.api), report)) from None
        if c.capture:
            known.update(c.capture(resp or {}))
        report.done.append(f"{'created' if c.create else 'changed'} {r.label}")
    report.done = list(dict.fromkeys(report.done))


def _filled(text: str, known: dict) -> str:
    """A plan's <placeholders> with the values the API answered."""
    for k, v in known.items():
        if isinstance(v, str):
            text = text.replace(f"<{k}>", v)
    return text


def _failed(r: Resource, line: str, report: Report) -> str:
    done = report.done
    before = (f"; before the failure: {', '.join(done)} (a rerun finishes the job)" if done
              else "; nothing was created or changed before it")
    return line + before


def _wait_running(clients, spec: Spec, known: dict, r: Resource) -> None:
    iid = known["instance_id"]
    timeout = spec.instance["wait_timeout"]
    t0 = last = time.monotonic()
    ec2 = clients.get("ec2")
    pause = 0.5
    while True:
        inst = _aws(r.label, lambda: ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0])
        state = inst["State"]["Name"]
        if state == "running":
            break
        if state in ("terminated", "shutting-down"):
            raise ProvisionError(f"{r.label}: {iid} is {state} "
                                 f"({(inst.get('StateReason') or {}).get('Message', 'no reason given')})")
        now = time.monotonic()
        if now - t0 > timeout:
            raise ProvisionError(f"{r.label}: {iid} is still {state} after {timeout} s; re-run to wait again")
        if now - last >= 15:
            say(f"waiting for {iid} to run ({state}, {now - t0:.0f}s)")
            last = now
        time.sleep(pause)
        pause = min(pause * 2, 5)  # a fresh instance runs within seconds; a slow one is polled less
    field = "PrivateIpAddress" if spec.address_field == "private_ip" else "PublicIpAddress"
    if inst.get(field):
        known["instance_ip"] = inst[field]


def then_a_host(inv, spec: Spec, clients, known: dict, report: Report):
    """Wait for SSH, trust the host key only on the console's word, and find the
    instance through the inventory's own EC2 discovery."""
    from ..config.discovery import ADDRESS_FIELDS
    from ..core.ssh import known_hosts_name
    from . import hostkeys

    iid = known["instance_id"]
    ec2 = clients.get("ec2")
    label = f"ec2 instance {spec.instance['name']}"
    inst = _aws(label, lambda: ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0])
    address = inst.get(ADDRESS_FIELDS[spec.address_field])
    if not address:
        raise ProvisionError(f"{label}: {iid} has no {spec.address_field} (hosts.ec2.address); "
                             "give it an eip or use private_ip from inside the VPC")
    timeout = spec.instance["wait_timeout"]
    keytype, b64 = hostkeys.wait_for_ssh(address, spec.ssh_port, timeout, say)
    console = _aws(label, lambda: hostkeys.wait_for_console_keys(ec2, iid, inst.get("PrivateIpAddress"), timeout, say))
    name = known_hosts_name(address, spec.ssh_port)
    result = hostkeys.record_if_matching(spec.known_hosts, name, keytype, b64, console, iid)
    note = f"{keytype} {hostkeys.sha256_fp(b64)} matches the console output"
    say(f"{'ok' if result == 'ok' else 'recorded':<14} host key {name}: {note}"
        + (f" (written to {spec.known_hosts})" if result != "ok" else ""))
    hosts = inv.resolve_hosts()
    host = next((h for h in hosts if h.tags.get("instance-id") == iid), None)
    if host is None:
        raise ProvisionError(f"{inv.file_of('hosts.ec2')}: hosts.ec2: discovery does not find {iid} "
                             f"(found: {', '.join(h.name for h in hosts) or 'none'}); check hosts.ec2.filters")
    return host


# -- destroy -----------------------------------------------------------------------------

def run_destroy(inv, spec: Spec, clients, res: list[Resource], *, dry_run: bool, yes: bool, delete_bucket: bool,
                verbose: int) -> None:
    known: dict = {"_destroy": True}
    states = []
    for r in res:
        st = _aws(r.label, lambda r=r: r.lookup(clients, known))
        r.publish(st, known)
        states.append(st)
    opts = {"delete_bucket": delete_bucket}
    plans = []
    report = Report(dry_run)
    for r, st in reversed(list(zip(res, states))):
        if isinstance(r, Network):
            continue
        changes = r.destroy(st, opts)
        if not st.exists and not (st.managed and changes):
            report.row(r, "-", "absent")
        elif not st.managed:
            note = f"left alone: {st.foreign or 'exists'} without the fabship tags ({spec.managed_desc})"
            report.line("left alone", r, note)
            report.row(r, st.id or "-", "left alone", "not managed by fabship")
        elif not changes:
            note = "kept: it holds objects (--delete-bucket deletes them and it)" if isinstance(r, Bucket) else ""
            report.line("kept", r, note)
            report.row(r, st.id or "-", "kept", note)
        else:
            plans.append((r, st, changes))
    if not plans:
        report.table(f"provision --destroy: {spec.base} in {spec.region}")
        say("provision --destroy: nothing managed by this inventory to delete")
        return
    if dry_run or not yes:
        for r, st, changes in plans:
            report.line("would delete", r, "; ".join(c.what for c in changes))
            for c in changes:
                say(f"  would call {c.render()}")
        if dry_run:
            say(f"provision --destroy (dry run): would delete {len(plans)} resource(s)")
            return
        raise FabshipError(f"provision --destroy would delete the {len(plans)} resource(s) above; "
                           "re-run with --yes to confirm (nothing was deleted)")
    addresses = []
    for r, st, changes in plans:
        if isinstance(r, Instance):
            addresses += [st.info.get("private_ip"), st.info.get("public_ip")]
        if isinstance(r, ElasticIp):
            addresses.append(st.info.get("ip"))
        _apply(r, changes, {}, report, clients)
        report.line("deleted", r, "; ".join(c.what for c in changes))
        report.row(r, st.id or "-", "deleted")
    removed = _forget_host_keys(spec, [a for a in addresses if a])
    report.table(f"provision --destroy: {spec.base} in {spec.region}")
    say(f"provision --destroy: {report.counts()}" + (f"; removed {removed} known_hosts line(s)" if removed else ""))


def _forget_host_keys(spec: Spec, addresses: list[str]) -> int:
    """A terminated instance's key must not vouch for the next machine at its address."""
    from ..core.ssh import known_hosts_name

    p = spec.known_hosts
    if not p or not p.exists() or not addresses:
        return 0
    names = {known_hosts_name(a, spec.ssh_port) for a in addresses}
    lines = p.read_text().splitlines(keepends=True)
    keep = [ln for ln in lines if not (ln.split() and set(ln.split()[0].split(",")) & names)]
    if len(keep) != len(lines):
        tmp = p.with_name(p.name + ".fabship-tmp")
        tmp.write_text("".join(keep))
        tmp.replace(p)
    return len(lines) - len(keep)
