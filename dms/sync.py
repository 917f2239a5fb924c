"""Thread primitives shared by the service and its outputs."""

from __future__ import annotations

import threading


class SignalSafeEvent(threading.Event):
    """A ``threading.Event`` that a signal handler may ``set``: its condition uses a
    re-entrant lock. A Python signal handler runs in the main thread between two bytecodes,
    possibly while that thread is inside ``set`` or ``wait`` holding the event's lock; with
    the plain lock, ``set`` from the handler would then wait for itself forever."""

    def __init__(self) -> None:
        super().__init__()
        self._cond = threading.Condition(threading.RLock())
