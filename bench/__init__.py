"""Throughput benchmarks (``make bench``); they print figures and are not part of the tests."""
