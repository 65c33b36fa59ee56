"""The ``pixpipe`` command-line client."""
