"""raysys: the Celery worker service's replacement on Ray. Its layers, top to bottom (tests/test_layers.py):

7 commands   ``commands/``, ``cli.py``, ``stack.py`` (the embedded local stack), ``synthetic.py`` (demo data)
6 services   ``serve/``, ``scheduler/``, ``jobs/`` (independent of one another)
5 queue      ``queue/``
4 tasks      ``tasks/`` (task modules share only the registry and the execution module)
3 work       ``ingest/``, ``analytics/`` (independent of one another)
2 actors     ``actors/``
1 backends   ``models/``, ``storage/`` (independent of one another)
0 foundation ``config.py``, ``errors.py``, ``constants.py``, ``paths.py``, ``audio.py``, ``runtime.py``, ``logs.py``

A module imports from its own layer and the layers below, never above.
"""
