"""One module per CLI subcommand family; each registers itself with ``cli.command``."""
