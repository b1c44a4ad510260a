"""tasks/config/env_contract.py: per-key rules, required/unknown keys, differ_from.
Messages name the key and the rule, never the value."""

import pytest
import yaml

from tasks.core.commands import Secret
from tasks.config.env_contract import (
    EnvContractError, check_contract, differ_check, enforce, problems, rule_problem,
)
from tasks.core.errors import ConfigError
from tasks.config.inventory import load_inventory

MARK = "Zq9canaryVALUE"


def inv_with(tmp_path, env: dict, name="app", extra: dict | None = None):
    data = {"hosts": {"static": {"h1": "10.0.0.1"}}, "env": env}
    data.update(extra or {})
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(data))
    return load_inventory(str(p))


def S(d):
    return {k: Secret(v) for k, v in d.items()}


@pytest.mark.parametrize("rule,arg,value,problem", [
    ("non_empty", True, "  ", "is empty (rule non_empty)"),
    ("non_empty", True, "x", None),
    ("min_length", 16, "short", "is shorter than min_length 16"),
    ("min_length", 5, "12345", None),
    ("max_length", 4, "12345", "is longer than max_length 4"),
    ("hex", True, "deadBEEF09", None),
    ("hex", True, "xyz", "is not hex (rule hex: digits 0-9 and a-f only)"),
    ("hex", True, "", "is not hex (rule hex: digits 0-9 and a-f only)"),
    ("base64", True, "aGVsbG8gd29ybGQ=", None),
    ("base64", True, "aGVsbG8_d29y-bGQ", None),   # urlsafe, unpadded
    ("base64", True, "not base64!", "is not base64 (rule base64)"),
    ("base64", True, "abc", None),                 # valid urlsafe unpadded
    ("url", True, "postgres://u:p@db:5432/app", None),
    ("url", True, "https://example.com/x?y=1", None),
    ("url", True, "example.com", "is not a URL (rule url: scheme://host...)"),
    ("url", True, "http://", "is not a URL (rule url: scheme://host...)"),
    ("one_of", ["debug", "info"], "info", None),
    ("one_of", ["debug", "info"], "trace", "is not one of the allowed values (rule one_of: debug, info)"),
    ("int_range", [1, 16], "4", None),
    ("int_range", [1, 16], "17", "is outside int_range [1, 16]"),
    ("int_range", [1, 16], "4x", "is not an integer (rule int_range [1, 16])"),
    ("pattern", r"sk_[a-z]+", "sk_live", None),
    ("pattern", r"sk_[a-z]+", "pk_live", "does not match pattern 'sk_[a-z]+'"),
])
def test_rules(rule, arg, value, problem):
    assert rule_problem(rule, arg, value) == problem


def test_problems_name_key_and_rule_never_value(tmp_path):
    inv = inv_with(tmp_path, {"contract": {
        "required": ["APP_SECRET", "DATABASE_URL"], "optional": ["LOG_LEVEL"],
        "rules": {"APP_SECRET": {"min_length": 32}, "LOG_LEVEL": {"one_of": ["info", "debug"]}}}})
    values = S({"APP_SECRET": MARK, "LOG_LEVEL": MARK + "x", "EXTRA": MARK})
    with pytest.raises(EnvContractError) as e:
        enforce(inv, values, "new.env")
    msg = str(e.value)
    assert MARK not in msg
    assert msg == (f"new.env: violates env.contract ({inv.path}): required key missing: DATABASE_URL; "
                   "key not in the contract: EXTRA (add to env.contract.optional, or set allow_unknown: true); "
                   "APP_SECRET is shorter than min_length 32; "
                   "LOG_LEVEL is not one of the allowed values (rule one_of: info, debug)")
    assert "\n" not in msg


def test_good_values_pass_and_unknown_allowed(tmp_path):
    inv = inv_with(tmp_path, {"contract": {"required": ["A"], "allow_unknown": True,
                                           "rules": {"A": {"hex": True, "min_length": 4}}}})
    enforce(inv, S({"A": "abcd12", "OTHER": "x"}), "f")


def test_no_contract_accepts_anything(tmp_path):
    inv = inv_with(tmp_path, {"path": "/etc/app/app.env"})
    enforce(inv, S({"ANY": ""}), "f")
    assert problems(S({"ANY": ""}), None) == []


def test_optional_absent_skips_rules(tmp_path):
    inv = inv_with(tmp_path, {"contract": {"optional": ["W"], "rules": {"W": {"int_range": [1, 2]}}}})
    enforce(inv, S({}), "f")


@pytest.mark.parametrize("contract,key,problem", [
    ({"rules": {"A": {"pattern": "("}}}, "env.contract.rules.A.pattern", "not a valid regular expression"),
    ({"rules": {"A": {"int_range": [5, 1]}}}, "env.contract.rules.A.int_range", "expected [MIN, MAX]"),
    ({"rules": {"A": {"int_range": [1, 2, 3]}}}, "env.contract.rules.A.int_range", "expected [MIN, MAX]"),
    ({"rules": {"A": {"min_length": 9, "max_length": 3}}}, "env.contract.rules.A", "min_length 9 is greater"),
    ({"rules": {"A": {}}}, "env.contract.rules.A", "needs at least one rule"),
    ({"required": ["A"], "optional": ["A"]}, "env.contract.optional", "listed as required too: A"),
    ({"differ_from": ["prod"]}, "env.contract.differ_keys", "name the keys"),
    ({"differ_keys": ["A"]}, "env.contract.differ_from", "name the inventories"),
])
def test_contract_definition_errors(tmp_path, contract, key, problem):
    inv = inv_with(tmp_path, {"contract": contract})
    with pytest.raises(ConfigError) as e:
        check_contract(inv)
    assert e.value.key == key
    assert problem in e.value.problem
    assert e.value.path == str(inv.path)


def test_schema_rejects_unknown_rule(tmp_path):
    with pytest.raises(ConfigError) as e:
        inv_with(tmp_path, {"contract": {"rules": {"A": {"min_len": 3}}}})
    assert "env.contract.rules.A.min_len" in str(e.value)
    assert "did you mean 'min_length'" in str(e.value)


def test_differ_from_other_inventory(tmp_path):
    (tmp_path / "prod.env").write_text(f"APP_SECRET={MARK}prod\nSHARED=same\n")
    (tmp_path / "dev.env").write_text(f"APP_SECRET={MARK}dev\nSHARED=same\n")
    inv_with(tmp_path, {"source": {"type": "file", "file": "prod.env"}}, name="prod")
    inv = inv_with(tmp_path, {"source": {"type": "file", "file": "dev.env"},
                              "contract": {"differ_from": ["prod"], "differ_keys": ["APP_SECRET", "SHARED"]}},
                   name="dev")
    res = differ_check(inv, S({"APP_SECRET": MARK + "dev", "SHARED": "same"}))
    assert res.errors == ["SHARED: same value as in prod (env.contract.differ_keys must differ between "
                          "environments)"]
    assert res.warnings == []
    res = differ_check(inv, S({"APP_SECRET": MARK + "prod", "SHARED": "other"}))
    assert res.errors and res.errors[0].startswith("APP_SECRET: same value as in prod")
    assert MARK not in " ".join(res.errors + res.warnings)


def test_differ_from_unavailable_is_a_warning(tmp_path):
    inv_with(tmp_path, {"source": {"type": "file", "file": "missing.env"}}, name="prod")
    inv = inv_with(tmp_path, {"contract": {"differ_from": ["prod", "nosuch"], "differ_keys": ["K"]}}, name="dev")
    res = differ_check(inv, S({"K": MARK}))
    assert res.errors == []
    assert len(res.warnings) == 2
    assert res.warnings[0].startswith("env.contract.differ_from: cannot compare with prod: ")
    assert "env file not found" in res.warnings[0]
    assert "cannot compare with nosuch" in res.warnings[1]


def test_differ_from_injected_loader():
    class Inv:  # differ_check only needs get/error/file_of via check_contract
        def get(self, key):
            return {"differ_from": ["x"], "differ_keys": ["K", "M"], "rules": {}}

    res = differ_check(Inv(), S({"K": "a", "M": "b"}), load_other=lambda n: S({"K": "a"}))
    assert res.errors == ["K: same value as in x (env.contract.differ_keys must differ between environments)"]
    assert res.warnings == ["env.contract.differ_from: x has no M to compare"]
