"""Hostile suite: one test module per class of attack (see tests/hostile/probe.py)."""
