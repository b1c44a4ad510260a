"""Makes `pytest tasks/verify_suite --fabship-inventory=...` work from a checkout:
the hooks live in plugin.py (also loadable with `-p tasks.verify_suite.plugin`
for `--pyargs tasks.verify_suite`); they are added here only when that plugin
is not loaded already (registering them twice would duplicate the options)."""
from tasks.verify_suite import plugin as _plugin

if not _plugin.registered():
    from tasks.verify_suite.plugin import (  # noqa: F401
        pytest_addoption, pytest_generate_tests, pytest_unconfigure)
