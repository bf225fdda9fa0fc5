"""The ``nargen`` command-line interface."""
