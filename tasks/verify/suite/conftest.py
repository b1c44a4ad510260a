"""Makes `pytest tasks/verify/suite --fabship-inventory=...` work from a checkout:
the hooks live in plugin.py (also loadable with `-p tasks.verify.suite.plugin`
for `--pyargs tasks.verify.suite`); they are added here only when that plugin
is not loaded already (registering them twice would duplicate the options)."""
from ..suite import plugin as _plugin

if not _plugin.registered():
    from .plugin import pytest_addoption, pytest_generate_tests, pytest_unconfigure  # noqa: F401
