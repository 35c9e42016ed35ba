"""The coverage-guided fuzzers of the three parsers (``python -m
tests.fuzz.run``) and the property tests of the same parsers."""
