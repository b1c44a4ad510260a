"""Read-only facts about a host: one script per host, one parser per fact kind."""
