"""The verbs of the ``pneumocnn`` command line, one module each: its options
(``add_arguments``) beside its handler (``run``), registered by :mod:`pneumocnn.cli`."""
