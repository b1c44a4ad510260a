"""A host of the run, as discovery found it (static list or EC2), with its
per-host placeholders ({host}, {address})."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Host:
    name: str
    address: str
    user: str
    port: int
    source: str
    tags: dict = field(default_factory=dict)
    groups: list = field(default_factory=list)
    vars: dict = field(default_factory=dict)

    def expand(self, value):
        """Per-host placeholders in inventory strings: {host} and {address}."""
        if isinstance(value, str):
            return value.replace("{host}", self.name).replace("{address}", self.address)
        if isinstance(value, list):
            return [self.expand(v) for v in value]
        if isinstance(value, dict):
            return {k: self.expand(v) for k, v in value.items()}
        return value

    def label(self) -> str:
        return self.name
