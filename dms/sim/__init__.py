"""The simulator: synthetic driving stories for the engine's tests, benchmarks and the
renderer, beside :mod:`dms.synth` (which renders them as video).

``script`` is the scenario language (one grammar for the engine's stories and the synthetic
renderer), ``scenarios`` builds and runs stories of observations through the engine, and
``mount_suite`` is the random camera-mount suite (``dms scenarios mounts``). Nothing at run
time imports it: the engine (:mod:`dms.engine`) stays the pure state machine alone.
"""
