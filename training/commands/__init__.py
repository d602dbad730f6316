"""One module per ``science-t2i`` subcommand (see training/cli.py)."""
