"""Durable outbox: alerts are committed to SQLite before they are published and deleted only
when the broker acknowledges them, so they survive broker outages and process restarts.

Policy when the outbox is full (``max_messages`` rows in all):

* telemetry is best effort: a new telemetry row is refused (and counted) when the outbox is full
  or already holds ``max_telemetry`` telemetry rows; an alert that needs room evicts the oldest
  telemetry row (counted).
* alerts are never dropped: when alerts alone fill the outbox, a new alert is still stored
  (the bound is exceeded), counted in ``alerts_over_bound`` and reported by
  :class:`PutResult.over_bound` so the caller logs it loudly and raises a system event.

Alert sequence numbers come from the same database (table ``meta``), so they keep increasing
across restarts; ``stream_id`` is a random id made when the database is created, so subscribers
can tell a reset counter (new database) from a replay. A ``(stream_id, seq)`` pair never names
two alerts: a seq is handed out only after it is on disk, or in a new stream.

When the disk refuses writes (state directory read-only, disk full, I/O errors), nothing is
dropped and nothing raises: alerts continue in a **new stream** that exists only in memory
(the counter on disk cannot move, so the old stream must not be continued: a restart would
reuse its numbers), each is kept in memory (logged at ERROR once per outage), :meth:`pending`
still hands it out so it is published, and a delete that cannot be written is remembered.
Every write (and :meth:`sync`, called by the MQTT worker about once a second) retries; once the
disk takes writes again the kept alerts are committed in order, with the new stream and its
counter. Only a process that stops while the disk still refuses writes loses what it kept in
memory, unless it can spill them (``spill_dir``, another filesystem such as systemd's
RuntimeDirectory in RAM: the next process takes them back and sends them); the next process
continues the old stream where the disk left it, and those numbers were never used. Every
close writes all undelivered alerts to the spill file, so a database destroyed or deleted
while the service is stopped is rebuilt from it at the next start (alerts the database
still has are not taken twice).

A damaged file is detected (:meth:`check`, run by every write and by the worker's ticks): the
database deleted or replaced under the running process, it or its ``-wal`` truncated, SQLite
reporting it malformed, or at start a file that is not a database. The file is renamed aside
(``<name>.damaged-<UTC time>``), a new database with a new stream is made, and every
undelivered alert this process holds (all of them up to ``max_messages``: the outbox keeps a
copy in memory) is written to it with its original stream and seq, so nothing is lost and
re-sends still de-duplicate. :meth:`take_damage` reports each such event once (the
communicator publishes a ``system_degraded`` / ``outbox_damaged`` record).

The outbox is three parts and a policy: the database file (:mod:`.outbox_store`), the spill
file (:mod:`.spill`) and the watch on the file (:mod:`.file_watch`); this module decides. Its
:class:`Mode` is ``on disk`` (the file takes writes), ``in memory`` (the disk refuses writes:
alerts wait in memory in a new stream, retried every ``RETRY_S``) or ``rebuilding`` (the file
was damaged and set aside: a new one is due, with every undelivered alert), and it changes
only as :data:`TRANSITIONS` says.

Files are created 0640 and the directory holding them is made 0750 (no access for others),
whatever the umask.

Thread safety: one connection guarded by a lock; every method is safe to call from any thread.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from dms.errors import DmsError
from dms.outputs.file_watch import FileWatch
from dms.outputs.outbox_store import (
    Kind,
    OutboxRow,
    SqliteStore,
    is_corrupt,
    secure_dir,
    set_aside,
    wal_of,
)
from dms.outputs.spill import SpilledAlert, SpillFile

log = logging.getLogger(__name__)

__all__ = ["Kind", "Mode", "Outbox", "OutboxRow", "OutboxStats", "PutResult", "secure_dir"]

RETRY_S = 1.0  # while the disk refuses writes, try it again at most this often


class Mode(Enum):
    ON_DISK = "on disk"  # the file takes writes; nothing waits in memory
    IN_MEMORY = "in memory"  # the disk refuses writes: alerts wait in memory, retried
    REBUILDING = "rebuilding"  # the file was damaged and set aside: a new one is due


class Change(Enum):
    REFUSED = "the disk refused a write"
    DAMAGED = "the file is damaged"
    WRITTEN = "everything held is on disk"
    SPILL_TAKEN = "alerts a previous process spilled were taken back"


#: the only ways the mode changes
TRANSITIONS: Mapping[tuple[Mode, Change], Mode] = {
    (Mode.ON_DISK, Change.REFUSED): Mode.IN_MEMORY,
    (Mode.ON_DISK, Change.DAMAGED): Mode.REBUILDING,
    (Mode.ON_DISK, Change.SPILL_TAKEN): Mode.IN_MEMORY,
    (Mode.IN_MEMORY, Change.REFUSED): Mode.IN_MEMORY,
    (Mode.IN_MEMORY, Change.DAMAGED): Mode.REBUILDING,
    (Mode.IN_MEMORY, Change.WRITTEN): Mode.ON_DISK,
    (Mode.IN_MEMORY, Change.SPILL_TAKEN): Mode.IN_MEMORY,
    (Mode.REBUILDING, Change.REFUSED): Mode.REBUILDING,
    (Mode.REBUILDING, Change.WRITTEN): Mode.ON_DISK,
    (Mode.REBUILDING, Change.SPILL_TAKEN): Mode.REBUILDING,
}


@dataclass(frozen=True, slots=True)
class PutResult:
    """What happened to a new row: its id and seq, and whether the bound was exceeded."""

    row: OutboxRow
    evicted_telemetry: int = 0
    over_bound: bool = False
    persisted: bool = True  # False: the disk refused it; kept in memory, retried


@dataclass(frozen=True, slots=True)
class OutboxStats:
    pending_alerts: int
    pending_telemetry: int
    telemetry_refused: int
    telemetry_evicted: int
    alerts_over_bound: int
    next_seq: int
    alerts_in_memory: int = 0  # pending alerts the disk refused so far (see the module doc)
    alerts_not_persisted: int = 0  # alerts that ever had to wait in memory (total)
    streams_started: int = 0  # new streams since the database was opened (disk refused, damage)
    damaged: int = 0  # damaged files set aside since start
    alerts_lost: int = 0  # undelivered alerts a damaged file took with it (beyond the copy)

    def as_dict(self) -> dict[str, int]:
        return {f: getattr(self, f) for f in self.__slots__}


@dataclass(slots=True)
class _Counters:
    telemetry_refused: int = 0
    telemetry_evicted: int = 0
    alerts_over_bound: int = 0
    alerts_not_persisted: int = 0
    streams_started: int = 0
    damaged: int = 0
    alerts_lost: int = 0


@dataclass(slots=True)
class _Stream:
    """The alert stream being written: its id, its next seq, and whether it is on disk."""

    id: str = ""
    next_seq: int = 1
    on_disk: bool = True  # False: it exists only in memory so far (never continue it there)


@dataclass(slots=True)
class _Held:
    """What this process holds beside the file."""

    memory: list[OutboxRow] = field(default_factory=list)  # alerts not on disk, oldest first
    deletes: set[int] = field(default_factory=set)  # acknowledged rows still on disk
    # every undelivered alert (on disk or not), newest max_messages: what a damaged file
    # would otherwise take with it
    copy: OrderedDict[int, OutboxRow] = field(default_factory=OrderedDict)


def _event_id(payload: bytes) -> str | None:
    """The ``event.event_id`` an alert row's payload carries, if any."""
    import json

    try:
        eid = json.loads(payload)["event"]["event_id"]
    except (ValueError, KeyError, TypeError):
        return None
    return eid if isinstance(eid, str) else None


class Outbox:
    """A bounded, durable FIFO of MQTT messages in ``path`` (see the module doc)."""

    def __init__(self, path: Path | str, *, max_messages: int = 10_000,
                 max_telemetry: int = 600,
                 clock_wall: Callable[[], float] = time.time,
                 spill_dir: Path | str | None = None, alert_topic: str | None = None) -> None:
        if max_messages < 1 or max_telemetry < 0:
            raise DmsError(f"outbox {path}: max_messages must be >= 1 and max_telemetry >= 0")
        self.path = Path(path)
        self.spill_dir = Path(spill_dir) if spill_dir else None
        self.max_messages = max_messages
        self.max_telemetry = max_telemetry
        self._clock_wall = clock_wall
        self._lock = threading.Lock()
        self._spill = None if self.spill_path is None else SpillFile(self.spill_path,
                                                                     alert_topic)
        self._watch = FileWatch(self.path, wal_of(self.path))
        self.mode = Mode.ON_DISK
        self._why = ""  # why not on disk
        self._retry_at = 0.0  # time.monotonic() of the next write attempt while not on disk
        self._stream = _Stream()
        self._last_id = 0  # the highest row id handed out
        self._held = _Held()
        self._n = _Counters()
        self._damage: list[str] = []  # not yet taken by take_damage()
        self._spilled_events: list[dict[str, object]] = []
        self._store = self._open_at_start()
        self._load_spill()

    # -- the mode ----------------------------------------------------------------------------

    def _change(self, change: Change, why: str) -> None:
        self.mode = TRANSITIONS[(self.mode, change)]
        self._why = "" if self.mode is Mode.ON_DISK else why

    @property
    def stream_id(self) -> str:
        return self._stream.id

    @property
    def degraded(self) -> str | None:
        """Why the file does not take writes (None while it does)."""
        return None if self.mode is Mode.ON_DISK else self._why

    @property
    def healthy(self) -> bool:
        """The file is in place and takes writes (nothing waits in memory)."""
        return self.mode is Mode.ON_DISK

    # -- opening -----------------------------------------------------------------------------

    def _open_at_start(self) -> SqliteStore:
        import sqlite3

        try:
            try:
                return self._open(keep_stream=False)
            except sqlite3.DatabaseError as exc:
                if not is_corrupt(exc):
                    raise
                why = f"{self.path.name} cannot be read at start: {exc}"
                set_aside(self.path, self._stamp(), why)
                store = self._open(keep_stream=False)
                self._record_damage(why, lost_on_disk=None)
                return store
        except (sqlite3.Error, OSError) as exc:
            hint = (" (is another dms process using this state directory?)"
                    if "locked" in str(exc) else "")
            raise DmsError(f"outbox {self.path}: cannot open the SQLite database: {exc}{hint}"
                           ) from exc

    def _open(self, keep_stream: bool) -> SqliteStore:
        """Open (or create) the file. ``keep_stream``: the file is new and takes this
        process's stream and counter (written by the next sync) instead of its own."""
        store, opened = SqliteStore.open(self.path, self.max_messages)
        if not keep_stream:
            self._stream = _Stream(opened.stream_id, opened.next_seq)
            self._last_id = opened.last_id
            for r in opened.alerts:
                self._held.copy[r.id] = r
        self._watch.note()
        return store

    def _stamp(self) -> str:
        return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._clock_wall()))

    # -- the spill file: alerts the disk refused, kept across a restart -----------------------

    @property
    def spill_path(self) -> Path | None:
        """Where alerts held in memory go when the process stops while the disk refuses writes
        (``spill_dir``: another filesystem, e.g. systemd's RuntimeDirectory in RAM)."""
        if self.spill_dir is None:
            return None
        import hashlib

        # one spill file per outbox: named after the outbox's absolute path
        tag = hashlib.sha256(str(self.path.resolve()).encode()).hexdigest()[:12]
        return self.spill_dir / f"{self.path.name}-{tag}.spill"

    def _spill_rows(self, rows: list[OutboxRow],
                    events: list[dict[str, object]] | None = None) -> int:
        """Write ``rows`` (and ``events``: alerts never given a seq, e.g. still waiting for a
        stalled disk) to the spill file; how many were written."""
        if self._spill is None:
            return 0
        return self._spill.write([SpilledAlert(r.topic, r.payload, r.qos, r.seq or 0,
                                               r.created_wall_s) for r in rows], events or [])

    def spill_now(self, events: list[dict[str, object]], lock_timeout_s: float = 0.5) -> int:
        """Write every undelivered alert, and ``events`` (alerts not yet given a seq), to the
        spill file now, for the next start: what a stop that cannot wait for a stalled disk
        does before the process ends. Does not wait longer than ``lock_timeout_s`` for a
        write under way (the rows are then copied without the lock). Returns how many."""
        got = self._lock.acquire(timeout=lock_timeout_s)
        try:
            rows: dict[int, OutboxRow] = {}
            for _attempt in range(3):
                try:
                    rows = {r.id: r for r in list(self._held.copy.values())}
                    rows |= {r.id: r for r in list(self._held.memory)}
                    break
                except RuntimeError:  # changed size while copied without the lock
                    continue
            return self._spill_rows([rows[k] for k in sorted(rows)], events)
        finally:
            if got:
                self._lock.release()

    def take_spilled_events(self) -> list[dict[str, object]]:
        """Alerts a previous process spilled before they had a seq (each is queued again by
        the caller, with a new seq); each is returned once."""
        out, self._spilled_events = self._spilled_events, []
        return out

    def _load_spill(self) -> None:
        """Take back the alerts a previous process spilled: into the database, or (while the
        disk refuses writes) into memory to be published and stored later. Their payloads keep
        their own ``(stream, seq)``: a stream that only ever existed in memory, never
        continued by anyone, so no pair is reused. Every line is checked
        (:mod:`dms.outputs.spill`); one that is not a well-formed alert of ours is skipped."""
        if self._spill is None or not self._spill.exists():
            return
        spilled, events = self._spill.read()
        self._spilled_events = self._not_stored_events(events)
        rows = self._not_stored_rows(spilled)
        if not rows:  # all of them are in the database (a clean stop's mirror)
            self._spill.remove()
            return
        with self._lock:
            self._held.memory.extend(rows)
            for row in rows:
                self._remember(row)
            self._change(Change.SPILL_TAKEN, self._why or "alerts spilled by a previous process")
            self._retry_at = 0.0
            self._sync_locked(force=True)  # removes the spill file once they are on disk
        log.warning("outbox %s: %d alert(s) spilled by the previous process taken back from "
                    "%s", self.path, len(rows), self._spill.path)

    def _not_stored_events(self, events: list[dict[str, object]]) -> list[dict[str, object]]:
        """Spilled alerts that had no row yet, less those whose stalled write reached the
        database after all (the process ended as it completed): their event ids are there."""
        stored = {_event_id(r.payload) for r in self._held.copy.values()} - {None}
        out = [e for e in events if e.get("event_id") not in stored]
        if out:
            log.warning("outbox %s: %d alert(s) the previous process could not store are "
                        "queued again from %s", self.path, len(out), self.spill_path)
        return out

    def _not_stored_rows(self, spilled: list[SpilledAlert]) -> list[OutboxRow]:
        """Spilled alert rows the database does not have, as new rows (ids after its)."""
        stored = {r.payload for r in self._held.copy.values()}
        rows: list[OutboxRow] = []
        for r in spilled:
            if r.payload not in stored:
                self._last_id += 1
                rows.append(OutboxRow(self._last_id, Kind.ALERT, r.topic, r.payload, r.qos,
                                      r.seq, r.created_wall_s))
        return rows

    # -- damage --------------------------------------------------------------------------------

    def _check_locked(self) -> bool:
        """Detect a damaged file and recover (see the module doc); True when the file is
        usable now."""
        if self.mode is not Mode.REBUILDING:
            why = self._watch.problem()
            if why is not None:
                self._on_damage(why)
        return self.mode is not Mode.REBUILDING

    def check(self) -> bool:
        """Look for a deleted, replaced or truncated file and recover from it; True when the
        file is usable."""
        with self._lock:
            return self._check_locked()

    def take_damage(self) -> list[str]:
        """Damage found since the last call (each a sentence naming the cause)."""
        with self._lock:
            out, self._damage = self._damage, []
            return out

    def _record_damage(self, why: str, lost_on_disk: int | None) -> None:
        self._n.damaged += 1
        self._damage.append(why)
        lost = ("; alerts it held are lost (it could not be read)" if lost_on_disk is None
                else f"; {lost_on_disk} alert(s) beyond the in-memory copy are lost"
                if lost_on_disk else "")
        log.error("outbox %s: %s; set aside, alerts continue in new stream %s%s", self.path,
                  why, self._stream.id, lost)

    def _on_damage(self, why: str) -> None:
        """The file is damaged: set it aside, keep every undelivered alert held in memory,
        start a new stream and write a new file right away (or as soon as the disk allows)."""
        import sqlite3

        try:
            on_disk, _ = self._pending_counts()
        except sqlite3.Error:
            on_disk = len(self._held.copy)
        held = {r.id: r for r in self._held.copy.values()} | {r.id: r for r in
                                                              self._held.memory}
        lost = max(0, on_disk - len(held))
        self._n.alerts_lost += lost
        set_aside(self.path, self._stamp(), why)
        self._store.close()  # its last checkpoint goes to the renamed (or deleted) inode
        self._store = SqliteStore.in_memory()
        self._held.memory = [held[k] for k in sorted(held)]
        self._held.deletes.clear()
        self._change(Change.DAMAGED, why)
        self._new_stream(why)
        self._record_damage(why, lost)
        self._sync_locked(force=True)

    def _new_stream(self, why: str) -> None:
        old, end = self._stream.id, self._stream.next_seq - 1
        self._stream = _Stream(uuid.uuid4().hex, 1, on_disk=False)
        self._n.streams_started += 1
        log.error("outbox %s: new alert stream %s from seq 1 (%s); stream %s ended at seq %d",
                  self.path, self._stream.id, why, old, end)

    # -- when the disk refuses writes --------------------------------------------------------

    def _refused(self, why: str) -> None:
        if self.mode is Mode.ON_DISK:
            log.error("outbox %s: the disk refuses writes (%s); alerts are kept in memory and "
                      "still published, writes are retried every %.0f s; alerts kept in memory "
                      "are lost if the process stops before the disk takes writes again",
                      self.path, why, RETRY_S)
        self._change(Change.REFUSED, why)
        self._retry_at = time.monotonic() + RETRY_S

    def _write_failed(self, exc: Exception) -> None:
        if is_corrupt(exc) and self.mode is not Mode.REBUILDING:
            self._on_damage(f"{self.path.name} is damaged: {exc}")
        else:
            self._refused(str(exc))

    def _keep_in_memory(self, topic: str, build_payload: Callable[[str, int], bytes],
                        qos: int) -> PutResult:
        if self._stream.on_disk:  # its counter cannot move on disk: do not continue it
            self._new_stream(f"the disk refuses writes: {self._why}")
        seq = self._stream.next_seq
        payload = build_payload(self._stream.id, seq)  # may raise: nothing kept
        self._last_id += 1
        row = OutboxRow(self._last_id, Kind.ALERT, topic, payload, qos, seq, self._clock_wall())
        self._held.memory.append(row)
        self._remember(row)
        self._stream.next_seq = seq + 1
        self._n.alerts_not_persisted += 1
        log.warning("outbox %s: alert seq %d of stream %s kept in memory (%d there now): %s",
                    self.path, seq, self._stream.id, len(self._held.memory), self._why)
        return PutResult(row, 0, False, persisted=False)

    def _remember(self, row: OutboxRow) -> None:
        self._held.copy[row.id] = row
        while len(self._held.copy) > self.max_messages:
            self._held.copy.popitem(last=False)

    def _sync_locked(self, force: bool = False) -> bool:
        """Write what the disk refused before (making a new file after damage); True once
        nothing is left to write."""
        if self.mode is Mode.ON_DISK:
            return True
        if not force and time.monotonic() < self._retry_at:
            return False
        rebuilding = self.mode is Mode.REBUILDING
        if not self._write_held(rebuilding):
            return self.healthy  # a damaged file may have been replaced at once
        if rebuilding:
            log.warning("outbox %s: new file made after damage (%s); %d undelivered alert(s) "
                        "written to it", self.path, self._why, len(self._held.memory))
        else:
            log.warning("outbox %s: the disk takes writes again; %d alert(s) kept in memory "
                        "are now stored, %d delivered row(s) removed", self.path,
                        len(self._held.memory), len(self._held.deletes))
        self._held.memory.clear()
        self._held.deletes.clear()
        self._stream.on_disk = True
        self._change(Change.WRITTEN, "")
        self._watch.note()
        if self._spill is not None:  # whatever was spilled is on disk now
            self._spill.remove()
        return True

    def _write_held(self, rebuilding: bool) -> bool:
        """One try at writing what is held (into a new file when rebuilding); False when the
        disk refused it (or the file turned out damaged: handled)."""
        import sqlite3

        try:
            if rebuilding:  # the new file first: the stand-in goes only once it exists
                store = self._open(keep_stream=True)
                self._store.close()
                self._store = store
            self._store.write_kept(self._held.memory, self._stream.id, self._stream.next_seq,
                                   self._last_id, self._held.deletes, self._clock_wall())
        except sqlite3.Error as exc:
            if not rebuilding and is_corrupt(exc):
                self._on_damage(f"{self.path.name} is damaged: {exc}")
            else:
                self._refused(str(exc))
            return False
        except OSError as exc:
            self._refused(str(exc))
            return False
        return True

    def sync(self, force: bool = False) -> bool:
        """Look for damage, then retry the writes the disk refused (at most every ``RETRY_S``
        unless ``force``); True when nothing is left to write."""
        with self._lock:
            self._check_locked()
            return self._sync_locked(force)

    # -- writing -----------------------------------------------------------------------------

    def _insert_alert(self, topic: str, payload: bytes, qos: int, seq: int) -> PutResult:
        now = self._clock_wall()
        row_id, evicted, over = self._store.insert_alert(topic, payload, qos, seq, now,
                                                          self.max_messages)
        self._stream.next_seq = seq + 1
        self._last_id = row_id
        self._n.telemetry_evicted += evicted
        self._n.alerts_over_bound += over
        row = OutboxRow(row_id, Kind.ALERT, topic, payload, qos, seq, now)
        self._remember(row)
        return PutResult(row, evicted, over)

    def put_alert(self, topic: str, build_payload: Callable[[str, int], bytes],
                  qos: int = 1) -> PutResult:
        """Allocate the next sequence number, build the payload with ``build_payload(stream_id,
        seq)`` and commit both.

        Returns once the row is on disk, or, while the disk refuses writes, kept in memory
        in a new stream (``PutResult.persisted`` False). Never refuses an alert (see the
        module policy).
        """
        import sqlite3

        if qos < 1:
            raise ValueError("alerts need QoS >= 1 to be acknowledged")
        with self._lock:
            for _attempt in range(2):  # a second time after a damaged file was replaced
                if not (self._check_locked() and self._sync_locked()):
                    break
                seq = self._stream.next_seq
                payload = build_payload(self._stream.id, seq)  # may raise: nothing stored
                try:
                    return self._insert_alert(topic, payload, qos, seq)
                except sqlite3.Error as exc:
                    self._write_failed(exc)
            return self._keep_in_memory(topic, build_payload, qos)

    def put_telemetry(self, topic: str, payload: bytes, qos: int = 0) -> OutboxRow | None:
        """Queue telemetry if there is room; None (and counted) when refused."""
        import sqlite3

        with self._lock:
            row_id = None
            if self._sync_locked():  # the disk refuses writes: telemetry is best effort
                now = self._clock_wall()
                try:
                    row_id = self._store.insert_telemetry(topic, payload, qos, now,
                                                          self.max_messages, self.max_telemetry)
                except sqlite3.Error as exc:
                    self._write_failed(exc)
            if row_id is None:
                self._n.telemetry_refused += 1
                return None
            self._last_id = row_id
            return OutboxRow(row_id, Kind.TELEMETRY, topic, payload, qos, None, now)

    def delete(self, row_id: int) -> None:
        """Remove an acknowledged row (no-op if it is already gone). Never raises: a delete
        the disk refuses is remembered and written later."""
        import sqlite3

        with self._lock:
            self._held.copy.pop(row_id, None)
            for i, row in enumerate(self._held.memory):
                if row.id == row_id:
                    del self._held.memory[i]
                    return
            if self._sync_locked():
                try:
                    self._store.delete(row_id)
                    return
                except sqlite3.Error as exc:
                    self._write_failed(exc)
            self._held.deletes.add(row_id)

    # -- reading -----------------------------------------------------------------------------

    def pending(self, after_id: int = 0, limit: int = 100) -> list[OutboxRow]:
        """Rows with ``id > after_id`` in insertion order (the order they must be sent in)."""
        import sqlite3

        with self._lock:
            try:
                rows = self._store.pending(after_id, limit)
            except sqlite3.Error as exc:
                log.warning("outbox %s: cannot read pending rows: %s", self.path, exc)
                if is_corrupt(exc) and self.mode is not Mode.REBUILDING:
                    self._on_damage(f"{self.path.name} is damaged: {exc}")
                rows = []
            out = [r for r in rows if r.id not in self._held.deletes]
            seen = {r.id for r in out}
            out += [r for r in self._held.memory if r.id > after_id and r.id not in seen]
        out.sort(key=lambda r: r.id)
        return out[:limit]

    def _pending_counts(self) -> tuple[int, int]:
        """(alerts, telemetry) still to deliver, counting memory and remembered deletes."""
        alerts, telemetry = self._store.counts(self._held.deletes)
        return alerts + len(self._held.memory), telemetry

    def _pending_total(self) -> int:
        import sqlite3

        try:
            return sum(self._pending_counts())
        except sqlite3.Error as exc:  # unreadable: not known to be drained
            log.warning("outbox %s: cannot count rows: %s", self.path, exc)
            return len(self._held.memory) + 1

    def __len__(self) -> int:
        with self._lock:
            return self._pending_total()

    def pending_count(self, timeout_s: float) -> int | None:
        """``len(self)``, or None when a write under way holds the outbox longer than
        ``timeout_s``."""
        if not self._lock.acquire(timeout=timeout_s):
            return None
        try:
            return self._pending_total()
        finally:
            self._lock.release()

    def stats(self) -> OutboxStats:
        with self._lock:
            return self._stats_locked()

    def try_stats(self, timeout_s: float) -> OutboxStats | None:
        """:meth:`stats`, or None when a write under way (a stalled disk) holds the outbox
        longer than ``timeout_s``."""
        if not self._lock.acquire(timeout=timeout_s):
            return None
        try:
            return self._stats_locked()
        finally:
            self._lock.release()

    def _stats_locked(self) -> OutboxStats:
        alerts, telemetry = self._pending_counts()
        n = self._n
        return OutboxStats(alerts, telemetry, n.telemetry_refused, n.telemetry_evicted,
                           n.alerts_over_bound, self._stream.next_seq, len(self._held.memory),
                           n.alerts_not_persisted, n.streams_started, n.damaged, n.alerts_lost)

    def close(self) -> int:
        """Write what is still held (after a last check for damage) and close. Returns how
        many undelivered alerts could not be written and are lost (logged at ERROR)."""
        with self._lock:
            self._check_locked()
            synced = self._sync_locked(force=True)
            # every undelivered alert goes to the spill file too (another filesystem): the
            # next start takes back those the database no longer has (the disk refused
            # them, or the file was damaged or deleted while stopped)
            undelivered = sorted(self._held.copy.values(), key=lambda r: r.id)
            spilled = self._spill_rows(undelivered)
            memory = self._held.memory
            if spilled and not synced:
                log.warning("outbox %s: the disk still refuses writes; %d undelivered "
                            "alert(s) spilled to %s for the next start", self.path,
                            len(memory), self.spill_path)
            if not undelivered and self._spill is not None:
                self._spill.remove()
            lost = len(memory) if not synced and memory and not spilled else 0
            if lost:
                log.error("outbox %s: closing while the disk refuses writes: %d undelivered "
                          "alert(s) kept in memory are lost (stream %s, seq %s)", self.path,
                          lost, self._stream.id, ", ".join(str(r.seq) for r in memory))
            self._store.close()
            return lost
