"""The command line: ``python -m cosmicman.cli run | lineage``."""
