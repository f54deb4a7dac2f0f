"""The pgdurable benchmark harness: ``python -m bench --help``."""
