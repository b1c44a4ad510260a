"""The verification suite: one test per (host, check). The checks live in
tasks/verify/checks.py (shared with `fab verify` and the gate); a check whose
prerequisite failed is skipped naming it."""
import pytest


def test_check(fabship_target, fabship_check):
    r = fabship_target.result(fabship_check)
    if r.status == "skipped":
        pytest.skip(r.message)
    if r.status != "passed":
        pytest.fail(f"{fabship_check}: {r.message}", pytrace=False)
