"""Notifications (issue 15): the inventory's `notify:` webhooks, posted from the
control machine when a deploy, rollback or rotate-env starts, succeeds or fails.

Payload (`format: json`): event (e.g. `deploy.success`), task, phase, app,
environment, release, hosts, failed_hosts, result, who, duration (seconds),
time. `format: slack` posts `{"text": ...}` (Slack's incoming webhooks and the
many services that accept that shape). The URL is a secret (it holds the
token): registered with the run's mask, never printed, and a failing webhook
is one masked warning line, never a failed run.
"""
from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone

from ..core.commands import Secret
from ..core.errors import ConfigError

PHASES = ("start", "success", "failure")


@dataclass
class Webhook:
    name: str
    url: Secret
    format: str
    events: tuple
    tasks: tuple
    timeout: float


def webhooks(inv) -> list[Webhook]:
    """The inventory's webhooks, URLs resolved (url_env read from the control
    machine's environment). ConfigError naming the key when a url_env is unset."""
    out = []
    for i, h in enumerate(inv.get("notify") or []):
        url = h.get("url")
        if not url:
            var = h["url_env"]
            url = os.environ.get(var, "")
            if not url.startswith(("http://", "https://")):
                raise inv.error(f"notify[{i}].url_env", f"${var} is {'not set' if not url else 'not an http(s) URL'} "
                                                        "on this machine (value not shown)")
        out.append(Webhook(h.get("name") or f"notify[{i}]", Secret(url), h.get("format") or "json",
                           tuple(h.get("events") or PHASES),
                           tuple(h.get("tasks") or ("deploy", "rollback", "rotate-env")),
                           float(h.get("timeout") or 5)))
    return out


def payload(*, task: str, phase: str, app: str, environment: str, release: str | None, hosts: list[str],
            failed: list[str], result: str, who: str, duration: float | None, detail: str = "",
            now: datetime | None = None) -> dict:
    now = now or datetime.now(timezone.utc)
    return {"event": f"{task}.{phase}", "task": task, "phase": phase, "app": app, "environment": environment,
            "release": release or "", "hosts": list(hosts), "failed_hosts": list(failed), "result": result,
            "who": who, "duration": round(duration, 1) if duration is not None else None,
            "time": now.strftime("%Y-%m-%dT%H:%M:%SZ"), "detail": detail}


def slack_text(p: dict) -> str:
    icon = {"start": ":rocket:", "success": ":white_check_mark:", "failure": ":x:"}.get(p["phase"], "")
    words = {"start": "started", "success": "succeeded", "failure": "FAILED"}.get(p["phase"], p["phase"])
    text = f"{icon} {p['task']} of {p['app']} ({p['environment']})" + \
        (f" release {p['release']}" if p["release"] else "") + f" {words}"
    text += f" on {len(p['hosts'])} host(s): {', '.join(p['hosts'])}"
    if p["failed_hosts"]:
        text += f"; failed: {', '.join(p['failed_hosts'])}"
    text += f" — by {p['who']}"
    if p["duration"] is not None:
        text += f" in {p['duration']:g}s"
    if p.get("detail"):
        text += f" ({p['detail']})"
    return text.strip()


def body_for(hook: Webhook, p: dict) -> bytes:
    data = {"text": slack_text(p)} if hook.format == "slack" else p
    return json.dumps(data).encode()


def post(hook: Webhook, body: bytes) -> str:
    """POST the body; '' on a 2xx answer, else why (never the URL)."""
    req = urllib.request.Request(hook.url.reveal(), data=body, method="POST",
                                 headers={"Content-Type": "application/json", "User-Agent": "fabship"})
    try:
        with urllib.request.urlopen(req, timeout=hook.timeout) as r:  # noqa: S310 (http(s) only: schema)
            return "" if 200 <= r.status < 300 else f"HTTP {r.status}"
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code}"
    except urllib.error.URLError as e:
        return f"{type(e.reason).__name__}: {e.reason}"
    except (OSError, ValueError) as e:
        return f"{type(e).__name__}: {e}"


class Notifier:
    """One run's webhooks: `start()` once, `finish(run)` once."""

    def __init__(self, run, task: str, release: str | None = None):
        self.run, self.task, self.release = run, task, release
        self.t0 = time.monotonic()
        try:
            self.hooks = [h for h in webhooks(run.inv) if task in h.tasks]
        except ConfigError:
            raise
        run.add_secrets([h.url for h in self.hooks])

    def send(self, phase: str, *, result: str, failed: list[str] = (), detail: str = "") -> None:
        from .audit import who

        hooks = [h for h in self.hooks if phase in h.events]
        if not hooks or self.run.dry_run:  # not a step: webhooks go from the control machine, a dry run sends none
            return
        inv = self.run.inv
        env = inv.get("environment") or os.path.splitext(os.path.basename(str(inv.path)))[0]
        p = payload(task=self.task, phase=phase, app=inv.get("app.name") or "", environment=env,
                    release=self.release, hosts=[h.name for h in self.run.hosts], failed=list(failed),
                    result=result, who=who(), duration=None if phase == "start" else time.monotonic() - self.t0,
                    detail=detail)
        sent = self.run.extra.setdefault("notify", [])
        for h in hooks:
            why = post(h, body_for(h, p))
            sent.append({"name": h.name, "event": p["event"], "result": "ok" if not why else "failed",
                         **({"error": self.run.mask_text(why)} if why else {})})
            if why:
                self.run.out.line("", f"warning: webhook {h.name} ({p['event']}): {self.run.mask_text(why)}; "
                                      "the run goes on")

    def start(self) -> None:
        self.send("start", result="started")

    def finish(self, *, interrupted: bool = False) -> None:
        failed = self.run.failed_hosts()
        if interrupted:
            self.send("failure", result="interrupted", failed=failed)
        elif failed:
            self.send("failure", result="failed", failed=failed)
        else:
            self.send("success", result="ok")
