"""AWS hooks around a host's deploy: take the host out of an ALB target group
before it switches, put it back (and wait until the ALB calls it healthy)
after.

The inventory's `hooks.alb` section:

    hooks:
      alb:
        target_group_arn: arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/ota-prod/0123abcd
        drain_timeout: 60        # seconds to wait for draining (keep >= the TG's deregistration delay)
        register_timeout: 300    # seconds to wait for 'healthy' after registering
        min_in_service: 1        # other healthy targets that must remain while one host is out

Deploy calls it per host, around the switch:

    with alb_out_of_service(ctx):
        switch_and_health_check(ctx)

Target id: the instance id for `instance` target groups (EC2 discovery puts it
in host.tags['instance-id']; static hosts set that tag themselves), the host's
address for `ip` target groups; `vars.alb_target` on a host overrides both.

boto3 is used directly (elbv2 describe/deregister/register) with our own
polling instead of botocore's waiters: the waiters poll every 15 s for up to
10 minutes, which is too coarse for a deploy and ignores drain_timeout.

Note on moto (the test stand-in): it models no draining and no health checks.
A deregistered target disappears at once and a registered running instance is
'healthy' at once; a stopped instance stays 'unused'. The polling code is the
same for AWS and moto; the tests cover the states moto can produce.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from ipaddress import ip_address

from ..core.errors import ConfigError, FabshipError, StepFailed

DRAINED = ("unused",)           # deregistered, or never registered
IN_SERVICE = ("healthy",)
# States in which the ALB still counts the target as a member of the group.
REGISTERED = ("initial", "healthy", "unhealthy", "unhealthy.draining", "draining", "unavailable")

# Targets this process has taken out, per target group: parallel hosts in one
# run must not each see "the others are healthy" and all leave together.
_OUT: dict[str, set[str]] = {}
_OUT_LOCK = threading.Lock()
_DECIDE_LOCK = threading.Lock()
_TG_CACHE: dict[tuple, dict] = {}


@dataclass
class AlbConfig:
    arn: str
    region: str
    profile: str | None
    endpoint_url: str | None
    port: int | None
    drain_timeout: float
    register_timeout: float
    poll_interval: float
    min_in_service: int
    file: str = ""

    @property
    def name(self) -> str:
        # arn:...:targetgroup/NAME/ID
        return self.arn.split(":targetgroup/", 1)[-1].split("/", 1)[0]

    def client_spec(self) -> dict:
        return {"region": self.region, "profile": self.profile, "endpoint_url": self.endpoint_url}


def alb_config(inv) -> AlbConfig | None:
    """The validated hooks.alb section, or None when the inventory has none."""
    hook = inv.get("hooks.alb")
    if not hook:
        return None
    arn = hook["target_group_arn"]
    arn_region = arn.split(":")[3]
    region = hook.get("region") or arn_region
    if region != arn_region:
        raise inv.error("hooks.alb.region", f"'{region}' differs from the target group ARN's region '{arn_region}'")
    return AlbConfig(
        arn=arn, region=region, profile=hook.get("profile"), endpoint_url=hook.get("endpoint_url"),
        port=hook.get("port"), drain_timeout=float(hook["drain_timeout"]),
        register_timeout=float(hook["register_timeout"]), poll_interval=float(hook["poll_interval"]),
        min_in_service=int(hook["min_in_service"]), file=inv.file_of("hooks.alb"),
    )


def _client(cfg: AlbConfig):
    from ..config.discovery import ec2_client

    return ec2_client(cfg.client_spec(), "elbv2", where="hooks.alb")


def _api(cfg: AlbConfig, what: str, call, **kwargs):
    """One elbv2 call; AWS problems become one line naming hooks.alb."""
    import botocore.exceptions as bx

    try:
        return call(**kwargs)
    except bx.ClientError as e:
        err = e.response.get("Error", {})
        raise FabshipError(f"hooks.alb: {what} on target group {cfg.name} refused: "
                           f"{err.get('Code')}: {err.get('Message')}") from None
    except bx.NoCredentialsError:
        raise FabshipError("hooks.alb: no AWS credentials found (env vars, ~/.aws profile or instance role)") from None
    except bx.EndpointConnectionError as e:
        raise FabshipError(f"hooks.alb: cannot reach the ELBv2 API: {e}") from None
    except bx.BotoCoreError as e:
        raise FabshipError(f"hooks.alb: {what}: {e}") from None


def describe_target_group(cfg: AlbConfig, client=None) -> dict:
    """TargetType, Port and deregistration delay of the group (cached per process)."""
    key = (cfg.arn, cfg.endpoint_url, cfg.region)
    if key in _TG_CACHE:
        return _TG_CACHE[key]
    client = client or _client(cfg)
    groups = _api(cfg, "describe_target_groups", client.describe_target_groups,
                  TargetGroupArns=[cfg.arn])["TargetGroups"]
    if not groups:
        raise FabshipError(f"hooks.alb.target_group_arn: target group {cfg.arn} not found")
    tg = groups[0]
    attrs = _api(cfg, "describe_target_group_attributes", client.describe_target_group_attributes,
                 TargetGroupArn=cfg.arn).get("Attributes", [])
    delay = next((a["Value"] for a in attrs if a["Key"] == "deregistration_delay.timeout_seconds"), None)
    info = {"type": tg.get("TargetType", "instance"), "port": tg.get("Port"),
            "deregistration_delay": int(delay) if delay not in (None, "") else None}
    _TG_CACHE[key] = info
    return info


def target_for(host, cfg: AlbConfig, target_type: str) -> dict:
    """The ELBv2 target ({'Id':..., 'Port':...}) for a host."""
    explicit = (host.vars or {}).get("alb_target")
    if explicit:
        tid = str(explicit)
    elif target_type == "instance":
        tid = (host.tags or {}).get("instance-id")
        if not tid:
            raise ConfigError(cfg.file, "hooks.alb",
                              f"host {host.name}: target group {cfg.name} registers instances, but the host "
                              "has no instance id (EC2 discovery sets tag instance-id; static hosts: "
                              "tags: {instance-id: i-...} or vars: {alb_target: ...})")
    elif target_type == "ip":
        tid = host.address
        try:
            ip_address(tid)
        except ValueError:
            raise ConfigError(cfg.file, "hooks.alb",
                              f"host {host.name}: target group {cfg.name} registers IP addresses, but the "
                              f"host's address '{tid}' is not an IP (set vars: {{alb_target: PRIVATE_IP}})") from None
    else:
        raise ConfigError(cfg.file, "hooks.alb.target_group_arn",
                          f"target group {cfg.name} has target type '{target_type}'; only instance and ip "
                          "target groups hold SSH hosts")
    target = {"Id": tid}
    if cfg.port:
        target["Port"] = cfg.port
    return target


def preflight(inv, hosts) -> AlbConfig | None:
    """Check before connecting: the target group exists and every host maps to
    a target. Raises a one-line error; returns the config (None: no hook)."""
    cfg = alb_config(inv)
    if cfg is None:
        return None
    info = describe_target_group(cfg)
    for h in hosts:
        target_for(h, cfg, info["type"])
    return cfg


@dataclass
class TargetState:
    state: str
    reason: str = ""
    description: str = ""

    def __str__(self) -> str:
        return self.state + (f" ({self.reason})" if self.reason else "")


class AlbTarget:
    """One host's target in one target group: read its state, take it out,
    put it back. Each method reports one step on the host context."""

    def __init__(self, ctx, cfg: AlbConfig, client=None, sleep=time.sleep, clock=time.monotonic):
        self.ctx = ctx
        self.cfg = cfg
        self.client = client or _client(cfg)
        self.info = describe_target_group(cfg, self.client)
        self.target = target_for(ctx.host, cfg, self.info["type"])
        self.sleep, self.clock = sleep, clock
        self.was_registered = False
        self.took_out = False

    @property
    def label(self) -> str:
        port = f":{self.target['Port']}" if "Port" in self.target else ""
        return f"{self.target['Id']}{port} in {self.cfg.name}"

    # -- reading ---------------------------------------------------------------------------
    def health(self) -> list[dict]:
        return _api(self.cfg, "describe_target_health", self.client.describe_target_health,
                    TargetGroupArn=self.cfg.arn)["TargetHealthDescriptions"]

    def state(self) -> TargetState:
        descs = _api(self.cfg, "describe_target_health", self.client.describe_target_health,
                     TargetGroupArn=self.cfg.arn, Targets=[self.target])["TargetHealthDescriptions"]
        for d in descs:
            if d["Target"]["Id"] == self.target["Id"]:
                th = d.get("TargetHealth", {})
                return TargetState(th.get("State", "unused"), th.get("Reason", ""), th.get("Description", ""))
        return TargetState("unused", "Target.NotRegistered")

    def _others_in_service(self) -> tuple[int, bool]:
        """(healthy targets other than this one and not taken out by this run,
        whether this target is alone in the group)."""
        with _OUT_LOCK:
            out = set(_OUT.get(self.cfg.arn, ()))
        others = [d for d in self.health() if d["Target"]["Id"] != self.target["Id"]]
        healthy = sum(1 for d in others if d["Target"]["Id"] not in out
                      and d.get("TargetHealth", {}).get("State") in IN_SERVICE)
        return healthy, not others and not (out - {self.target["Id"]})

    def _refuse(self, others: int):
        self.ctx.fail("alb deregister",
                      f"{self.label}: taking it out would leave {others} healthy target(s) in {self.cfg.name}, "
                      f"fewer than hooks.alb.min_in_service={self.cfg.min_in_service}; deploy fewer hosts at "
                      "once (deploy.batch) or lower min_in_service")

    def _wait(self, want: tuple, timeout: float) -> tuple[TargetState, float]:
        t0 = self.clock()
        while True:
            st = self.state()
            if st.state in want:
                return st, self.clock() - t0
            if self.clock() - t0 >= timeout:
                return st, self.clock() - t0
            self.sleep(self.cfg.poll_interval)

    # -- changing --------------------------------------------------------------------------
    def take_out(self) -> bool:
        """Deregister and wait for draining to finish. True when it changed something."""
        ctx, cfg = self.ctx, self.cfg
        step = "alb deregister"
        st = self.state()
        self.was_registered = st.state in REGISTERED
        if not self.was_registered:
            ctx.ok(step, f"{self.label}: not registered ({st})")
            return False
        if ctx.dry_run:  # not a host Change: boto3 calls from the control machine; a dry run only reads
            others, alone = self._others_in_service()
            if not alone and others < cfg.min_in_service:
                self._refuse(others)
            ctx.change(step, f"{self.label}: would deregister and wait up to {cfg.drain_timeout:g}s for draining")
            return True
        # Decide and mark under one lock so parallel hosts of this run see each other.
        with _DECIDE_LOCK:
            others, alone = self._others_in_service()
            if not alone and others < cfg.min_in_service:
                self._refuse(others)
            with _OUT_LOCK:
                _OUT.setdefault(cfg.arn, set()).add(self.target["Id"])
            self.took_out = True
        t_start = time.monotonic()
        try:
            _api(cfg, "deregister_targets", self.client.deregister_targets,
                 TargetGroupArn=cfg.arn, Targets=[self.target])
        except FabshipError as e:
            self._forget()
            ctx.fail(step, f"{self.label}: {e}")
        except BaseException:
            self._forget()
            raise
        st, waited = self._wait(DRAINED, cfg.drain_timeout)
        if st.state not in DRAINED:
            delay = self.info.get("deregistration_delay")
            hint = (f" (the target group's deregistration delay is {delay}s)" if delay is not None else "")
            # Leave the host as we found it: back in service, nothing deployed.
            self._register_quietly()
            ctx.fail(step, f"{self.label}: still {st} after hooks.alb.drain_timeout={cfg.drain_timeout:g}s"
                           f"{hint}; re-registered it and deployed nothing: raise drain_timeout or lower "
                           "the delay")
        ctx.record(step, "changed", f"{self.label}: deregistered, drained in {waited:.1f}s", t_start)
        return True

    def _register_quietly(self) -> None:
        try:
            _api(self.cfg, "register_targets", self.client.register_targets,
                 TargetGroupArn=self.cfg.arn, Targets=[self.target])
        finally:
            self._forget()

    def _forget(self) -> None:
        with _OUT_LOCK:
            _OUT.get(self.cfg.arn, set()).discard(self.target["Id"])
        self.took_out = False

    def put_back(self, *, wait: bool = True) -> None:
        """Register and wait until the ALB reports the target healthy."""
        ctx, cfg = self.ctx, self.cfg
        step = "alb register"
        if ctx.dry_run:  # not a host Change: boto3 calls from the control machine (see take_out)
            ctx.change(step, f"{self.label}: would register and wait up to {cfg.register_timeout:g}s for healthy")
            return
        t_start = time.monotonic()
        st = self.state()
        if st.state in REGISTERED and st.state not in ("draining", "unhealthy.draining"):
            changed = False
        else:
            try:
                _api(cfg, "register_targets", self.client.register_targets, TargetGroupArn=cfg.arn,
                     Targets=[self.target])
            except FabshipError as e:
                self._forget()
                ctx.fail(step, f"{self.label}: {e}")
            changed = True
        self._forget()
        if not wait:
            ctx.record(step, "changed" if changed else "ok", f"{self.label}: registered (not waiting)", t_start)
            return
        st, waited = self._wait(IN_SERVICE, cfg.register_timeout)
        if st.state not in IN_SERVICE:
            detail = f": {st.description}" if st.description else ""
            ctx.fail(step, f"{self.label}: registered but still {st} after hooks.alb.register_timeout="
                           f"{cfg.register_timeout:g}s{detail}")
        msg = f"{self.label}: registered, healthy in {waited:.1f}s" if changed else f"{self.label}: already healthy"
        ctx.record(step, "changed" if changed else "ok", msg, t_start)


def out_of_service_if(ctx, cfg: AlbConfig | None):
    """alb_out_of_service around one host's switch when the run checked an ALB
    hook in its preflight (deploy, rollback, the fleet rollback); else nothing."""
    return alb_out_of_service(ctx, cfg) if cfg is not None else nullcontext()


@contextmanager
def alb_out_of_service(ctx, cfg: AlbConfig | None = None, client=None):
    """Around one host's switch: deregister + drain before, register + wait
    healthy after. No-op when the inventory has no hooks.alb.

    After a failed deploy the host is registered again too: deploy keeps the
    old release serving on failure (new before old), and the ALB's own health
    check keeps a broken host out of rotation. A host that was not registered
    before is registered only after a successful deploy. On Ctrl-C/SIGTERM the
    host is registered without waiting, so the user is not kept waiting."""
    cfg = cfg or alb_config(ctx.inv)
    if cfg is None:
        yield None
        return
    t = AlbTarget(ctx, cfg, client=client)
    t.take_out()
    try:
        yield t
    except Exception:
        if t.was_registered:
            _put_back_after_failure(t)
        raise
    except BaseException:
        if t.was_registered and not ctx.dry_run:  # not a step: a dry run took nothing out to put back
            try:
                t.put_back(wait=False)
            except Exception:
                pass
        raise
    else:
        t.put_back()


def _put_back_after_failure(t: AlbTarget) -> None:
    """Re-register after the host's deploy failed, without hiding that failure."""
    try:
        t.put_back()
    except (StepFailed, FabshipError) as e:
        t.ctx.say(f"alb register after failure: {e}")
    finally:
        t._forget()
