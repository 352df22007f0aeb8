"""Benchmarks: scripts run as `python bench/NAME.py`, each printing a table and writing JSON (bench/README.md).

A script puts the repository root first on sys.path (in place of bench/, whose triton/ folder would shadow
the triton package), so the scripts import one another as `bench.*` (the server-process and report helpers
live in bench/speech_ctc.py).
"""
