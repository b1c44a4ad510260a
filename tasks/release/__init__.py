"""Releases on a host: the release model, sources, lock, audit, health, activation."""
