"""fabship's verification suite as a pytest/testinfra module (see conftest.py)."""
