"""The ``asc-search`` command line, one module per command group."""
