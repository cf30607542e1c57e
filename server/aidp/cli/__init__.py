"""The `aidp` command line: a thin adapter that parses arguments, calls the engine and prints."""
