"""The fab tasks: one module per task, each a named list of stages."""
