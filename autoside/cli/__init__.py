"""The ``autoside`` command, thin over the Python API: one module per command group (``train``, ``catalog``,
``tune``, ``export``, ``pretrain``) registering into :mod:`~autoside.cli.registry`; :mod:`~autoside.cli.main` wires
them into one parser."""
