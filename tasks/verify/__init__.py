"""Read-only verification: the checks, the testinfra backend, the gate."""
