"""Sweeps: spec parsing and validation, the Ray Tune driver, live progress."""
