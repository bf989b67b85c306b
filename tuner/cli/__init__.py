"""The ``tuner`` command line. Subcommand modules import heavy libraries only when run."""
