"""Local infrastructure for development, ``make cluster`` and the test suite."""
