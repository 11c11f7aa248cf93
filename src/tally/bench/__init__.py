"""Benchmarks anyone can run (`tally bench ...`): numbers for the README come from here."""
