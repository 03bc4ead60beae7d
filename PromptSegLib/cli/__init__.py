"""The ``promptseg`` command line: argument parsing and printing only; each subcommand calls the library."""
