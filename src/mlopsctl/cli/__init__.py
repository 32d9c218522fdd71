"""The command line: Typer + rich only. Heavy libraries are imported inside command bodies."""
