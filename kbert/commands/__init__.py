"""Subcommands of the `kbert` command, one module each (see kbert/cli.py)."""
