"""The bottom layer: errors, command values and quoting, templates, SSH, the runner."""
