"""Small pgdurable apps and helpers that the engine and crash tests run, in-process or in worker
subprocesses (``python -m apps.run_worker apps.<module>``)."""
