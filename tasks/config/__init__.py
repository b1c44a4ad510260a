"""Inventories: load, merge, validate; host discovery; the app model every layer reads."""
