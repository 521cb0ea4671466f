"""The delivery store, split by owner: one module per set of tables, over one database layer.

``database.py`` owns the connection (``connections.py``), the SQL dialect (``dialect.py``) and
the migrations runner; each other module owns its tables, their migrations and every statement
that touches them. ``worker/store.py`` composes them into ``Store`` for the callers that hold
one object. A module here imports only its siblings and the floor below (``worker.outcomes``,
``worker.identity``, ``worker.journal``, ``worker.logs``, ``producer``); tests/test_layers.py
checks it.
"""
