"""fabship: provision, configure and deploy to SSH hosts (static or EC2 by tag).

Installed, this package is `fabship`; in its own repository it is `tasks/`
(pyproject maps one to the other). Inside the package every import is relative,
so both names work. The layers, lowest first: core, config, facts, resources,
verify, release, provision, cli (sandbox: developer tooling, not installed);
docs/ARCHITECTURE.md explains them and tests/unit/test_architecture.py keeps
imports pointing down."""

__version__ = "0.2.0"
