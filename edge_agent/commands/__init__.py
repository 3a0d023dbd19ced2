"""Subcommands of the `vitalbridge` tool, one module each."""
