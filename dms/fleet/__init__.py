"""The fleet side (issue 24): every vehicle's alerts stored exactly once, in a real database,
and shown.

Data flows one way::

    broker --(MQTT 5, persistent session, QoS 1, $share)--> ingest --(one transaction)--> store
                                                                                      |
                                               report (counts, gaps, export) <--------+
                                               serve  (the page)              <-------+

* :mod:`.payloads`  what a message on ``<prefix>/<device>/alert|state|status`` is (pure);
* :mod:`.schema`    the tables; :mod:`.migrations` the versioned steps that make them;
* :mod:`.store`     the database (SQLite file or PostgreSQL through SQLAlchemy and psycopg 3);
* :mod:`.ingest`    the MQTT worker: stores a batch in one transaction, acknowledges after commit;
* :mod:`.report`    what is stored, as one JSON object, text or an export;
* :mod:`.serve`     the token-protected page;
* :mod:`.simulate`  simulated vehicles publishing through the project's own outbox and MQTT code.

docs/fleet.md describes the guarantees at each hop.
"""
