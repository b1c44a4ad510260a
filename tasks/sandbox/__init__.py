"""Developer tooling: the local sandbox fleet. Never imported by the product."""
