"""The ``raysys`` sub-commands, one module per family (see :mod:`raysys.cli`).

Layer 7 (top), with ``cli.py``, ``stack.py`` and ``synthetic.py``: may import every layer below;
imported by nothing in raysys. The CLI imports every command module to build its parser, so a
command imports what loads Ray (actors, the bridge, tasks, Serve) inside the function that needs it.
"""
