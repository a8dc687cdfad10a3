"""The ``asc-search`` command line, one module per command group.

``main`` assembles the group from the command modules; they share options, context and output
through ``shared`` and never import each other (``tests/test_cli_imports.py``).
"""
