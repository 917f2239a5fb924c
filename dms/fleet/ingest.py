"""``dms fleet ingest``: MQTT -> the fleet store, each alert stored exactly once.

One worker is one MQTT 5 client with a **persistent session** (clean start off, a session that
does not expire by default), so the broker keeps what arrives while the worker is down, and
**manual acknowledgement**: a message is acknowledged (PUBACK) only after the transaction that
stores it has committed. Alerts come through the shared subscription
``$share/<group>/<prefix>/+/alert``, so several workers (``--workers N``, or processes on several
machines with distinct client ids) split one broker's load; ``status`` and ``state`` (retained,
low volume) through plain subscriptions, so every worker sees every device's.

Threads: paho's network thread only puts each message on a queue (bounded by the session's
receive maximum: the broker never has more than that many unacknowledged messages out to us);
the worker's own thread (:meth:`Ingester.run`, the caller's) takes batches off it, classifies
them (:mod:`.payloads`), stores each batch in one transaction (:meth:`.Store.write`) and then
acknowledges its messages in the order they arrived.

* A duplicate (QoS 1 allows them; a worker killed between commit and PUBACK makes them) is
  counted and dropped by the store's key.
* A rejected message (malformed, wrong schema, too large, foreign topic, naming another device)
  is counted with the batch, acknowledged, and logged in aggregate every ``report_interval_s``.
* While the database refuses the transaction (down, locked, full) nothing is acknowledged: the
  batch is retried with a growing pause, the broker stops sending once ``receive_maximum``
  messages are out, and keeps the rest for the session. Nothing is lost; ingest resumes by
  itself.
* A message the database refuses on its own (not for want of space or connection) is stored
  alone to find it, counted as ``unstorable``, logged and acknowledged: it never blocks the rest.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dms.errors import DmsError
from dms.fleet.payloads import Fault, Message, Rejected, classify
from dms.fleet.store import Store, StoreRejected, StoreUnavailable, shown

log = logging.getLogger(__name__)

NEVER_EXPIRES = 0xFFFFFFFF  # MQTT 5 session expiry interval: the session never expires


@dataclass(frozen=True, slots=True)
class IngestSettings:
    """One worker's settings (``dms fleet ingest`` options)."""

    host: str = "localhost"
    port: int = 1883
    prefix: str = field(default="dms", metadata={"doc": "the devices' topic prefix"})
    share_group: str = field(default="dms-fleet", metadata={
        "doc": "MQTT 5 shared-subscription group of the alert topic; empty: a plain "
               "subscription (one worker only)"})
    client_id: str = field(default="", metadata={
        "doc": "this worker's MQTT client id, which names its persistent session: keep it "
               "stable across restarts; empty: dms-fleet-<host name>-1"})
    username: str = ""
    password_env: str = "DMS_MQTT_PASSWORD"
    tls_ca: str = ""
    keepalive_s: int = 30
    session_expiry_s: int = field(default=NEVER_EXPIRES, metadata={
        "doc": "how long the broker keeps the session (and queued alerts) while the worker is "
               "down; default: never expires"})
    receive_maximum: int = field(default=1000, metadata={
        "doc": "unacknowledged messages the broker may have out to this worker (bounds the "
               "batch and the memory held while the database refuses writes)"})
    batch_max: int = field(default=500, metadata={"doc": "messages per transaction, at most"})
    batch_wait_s: float = field(default=0.05, metadata={
        "doc": "after the first message of a batch, wait at most this long for more"})
    max_payload_bytes: int = field(default=65_536, metadata={
        "doc": "larger payloads are rejected (too_large)"})
    retry_max_s: float = field(default=10.0, metadata={
        "doc": "longest pause between attempts while the database refuses writes"})
    report_interval_s: float = field(default=60.0, metadata={
        "doc": "how often counts and rejections are logged (in aggregate)"})

    def validate(self) -> None:
        if not self.prefix or any(c in self.prefix for c in "+#\x00") or self.prefix.endswith(
                "/") or self.prefix.startswith("/"):
            raise DmsError(f"--prefix {self.prefix!r}: a topic prefix without wildcards or an "
                           "empty level")
        if any(c in self.share_group for c in "/+#\x00"):
            raise DmsError(f"--share-group {self.share_group!r}: one topic level without "
                           "wildcards")
        if not 1 <= self.receive_maximum <= 65_535:
            raise DmsError("--receive-maximum must be in 1..65535")
        if self.batch_max < 1:
            raise DmsError("--batch-max must be >= 1")
        if self.max_payload_bytes < 1:
            raise DmsError("--max-payload-bytes must be >= 1")
        if not 0 <= self.session_expiry_s <= NEVER_EXPIRES:
            raise DmsError(f"--session-expiry-s must be in 0..{NEVER_EXPIRES}")

    @property
    def alert_filter(self) -> str:
        plain = f"{self.prefix}/+/alert"
        return f"$share/{self.share_group}/{plain}" if self.share_group else plain

    @property
    def filters(self) -> tuple[str, ...]:
        return (self.alert_filter, f"{self.prefix}/+/status", f"{self.prefix}/+/state")


def default_client_id() -> str:
    return f"dms-fleet-{socket.gethostname().split('.')[0]}"


@dataclass(frozen=True, slots=True)
class _Incoming:
    mid: int
    qos: int
    generation: int  # the connection it arrived on (see Ingester._ack)
    topic: str
    payload: bytes


@dataclass
class WorkerStats:
    stored: int = 0
    duplicates: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    acked: int = 0
    batches: int = 0
    store_outages: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"stored": self.stored, "duplicates_dropped": self.duplicates,
                "rejected": dict(self.faults), "acked": self.acked, "batches": self.batches,
                "store_outages": self.store_outages}


class Ingester:
    """One ingest worker: ``run(stop)`` until ``stop`` is set (or a fatal broker refusal)."""

    def __init__(self, settings: IngestSettings, store: Store,
                 environ: Mapping[str, str] | None = None,
                 clock_wall: Callable[[], float] = time.time, supervised: bool = False
                 ) -> None:
        settings.validate()
        self.settings = settings
        self.store = store
        self.worker = settings.client_id or f"{default_client_id()}-1"
        self._environ = os.environ if environ is None else environ
        self._clock_wall = clock_wall
        self._queue: queue.Queue[_Incoming] = queue.Queue()
        self._generation = 0  # +1 at every connect and disconnect (see _ack)
        self._fatal: str | None = None
        self._stop = threading.Event()
        self._client: Any = None
        self.subscribed = threading.Event()
        self.stats = WorkerStats()
        self._window = WorkerStats()  # since the last aggregate log line
        self._examples: dict[str, str] = {}
        self._next_report = time.monotonic() + settings.report_interval_s
        self._outage_since: float | None = None
        self._ppid = os.getppid() if supervised else None  # --workers N: stop with it

    # -- MQTT ------------------------------------------------------------------------------------

    def _build_client(self) -> Any:
        import paho.mqtt.client as mqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        s = self.settings
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.worker,
                             protocol=mqtt.MQTTv5)
        client.manual_ack_set(True)  # PUBACK only after the commit
        paho_log = logging.getLogger(__name__ + ".paho")
        client.on_log = lambda _c, _u, _level, text: paho_log.debug("%s", text)
        client.reconnect_delay_set(1, 10)
        if s.username:
            client.username_pw_set(s.username, self._environ.get(s.password_env))
        if s.tls_ca:
            try:
                client.tls_set(ca_certs=s.tls_ca)
            except (OSError, ValueError) as exc:
                raise DmsError(f"--tls-ca {s.tls_ca}: {exc}") from None
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = s.session_expiry_s
        props.ReceiveMaximum = s.receive_maximum
        self._connect_props = props
        return client

    def _on_connect(self, client: Any, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            text = str(reason)
            if "authori" in text.lower() or "password" in text.lower():
                self._fail(f"--mqtt {self.settings.host}:{self.settings.port}: the broker "
                           f"refused the login: {text}")
            else:
                log.error("ingest %s: broker refused the connection: %s", self.worker, text)
            return
        self._generation += 1
        log.info("ingest %s: connected to %s:%d (session %s)", self.worker, self.settings.host,
                 self.settings.port, "resumed" if flags.session_present else "new")
        from paho.mqtt.subscribeoptions import SubscribeOptions

        client.subscribe([(f, SubscribeOptions(qos=1)) for f in self.settings.filters])

    def _on_connect_fail(self, _c: Any, _u: Any) -> None:
        log.warning("ingest %s: cannot reach the broker %s:%d; retrying", self.worker,
                    self.settings.host, self.settings.port)

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self._generation += 1  # nothing received so far is acknowledged any more (see _ack)
        if not self._stop.is_set():
            log.warning("ingest %s: disconnected from the broker (%s); reconnecting, the "
                        "session keeps what arrives meanwhile", self.worker, reason)

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, reasons: Any, _p: Any) -> None:
        refused = [(f, str(r)) for f, r in zip(self.settings.filters, reasons, strict=False)
                   if r.is_failure]
        if refused:
            f, why = refused[0]
            hint = (" (shared subscriptions need an MQTT 5 broker that allows them; "
                    "--share-group '' subscribes plainly)" if f.startswith("$share/") else "")
            self._fail(f"the broker refused the subscription {f!r}: {why}{hint}")
            return
        log.info("ingest %s (pid %d): subscribed to %s", self.worker, os.getpid(),
                 ", ".join(self.settings.filters))
        self.subscribed.set()

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        self._queue.put(_Incoming(msg.mid, msg.qos, self._generation, msg.topic,
                                  bytes(msg.payload)))

    def _fail(self, why: str) -> None:
        self._fatal = why
        self._stop.set()

    # -- the worker loop -------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> int:
        """Connect, ingest until ``stop`` is set; returns 0, or raises DmsError when the broker
        refuses the login or the subscription. The store must be open."""
        self._client = self._build_client()
        s = self.settings
        self._client.connect_async(s.host, s.port, keepalive=s.keepalive_s, clean_start=False,
                                   properties=self._connect_props)
        self._client.loop_start()
        try:
            self._loop(stop)
        finally:
            self._stop.set()
            self._client.disconnect()  # a normal disconnect keeps the session
            self._client.loop_stop()
            self._report(final=True)
        if self._fatal:
            raise DmsError(self._fatal)
        return 0

    def _stopping(self, stop: threading.Event) -> bool:
        if stop.is_set() or self._stop.is_set():
            return True
        if self._ppid is not None and os.getppid() != self._ppid:  # the supervisor is gone
            log.warning("ingest %s: the supervising process is gone; stopping", self.worker)
            self._stop.set()
            return True
        return False

    def _take_batch(self) -> list[_Incoming]:
        try:
            first = self._queue.get(timeout=0.5)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self.settings.batch_wait_s
        while len(batch) < self.settings.batch_max:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    batch.append(self._queue.get(timeout=left))
                except queue.Empty:
                    break
        return batch

    def _loop(self, stop: threading.Event) -> None:
        delay = 0.0
        batch: list[_Incoming] = []
        messages: list[Message] = []
        s = self.settings
        while True:
            if not batch:
                if self._stopping(stop):
                    return
                batch = self._take_batch()
                if not batch:
                    self._report()
                    continue
                messages = [classify(b.topic, b.payload, s.prefix, s.max_payload_bytes)
                            for b in batch]
            try:
                self._store(messages)
            except StoreUnavailable as exc:
                delay = min(self.settings.retry_max_s, max(0.25, delay * 2))
                self._outage(str(exc), len(batch), delay)
                if self._stopping(stop):
                    return  # nothing acknowledged: the broker re-sends it all
                stop.wait(delay)
                continue
            if self._outage_since is not None:
                log.warning("ingest %s: the database takes writes again after %.1f s; "
                            "acknowledging what waited", self.worker,
                            time.monotonic() - self._outage_since)
                self._outage_since = None
            delay = 0.0
            self._ack(batch)
            batch = []
            self._report()

    def _outage(self, why: str, held: int, delay: float) -> None:
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            self.stats.store_outages += 1
            log.error("ingest %s: the database refuses writes (%s); nothing is acknowledged, "
                      "the broker keeps the alerts; retrying", self.worker, why)
        else:
            log.info("ingest %s: database still refuses writes (%s); %d message(s) held, next "
                     "try in %.1f s", self.worker, why, held, delay)

    def _store(self, messages: Sequence[Message]) -> None:
        try:
            result = self.store.write(messages, self.worker, self._clock_wall())
            self._count(result.stored, result.duplicates, result.faults, messages)
        except StoreRejected as exc:
            log.warning("ingest %s: the database refused a batch of %d (%s); storing its "
                        "messages one by one", self.worker, len(messages), exc)
            for m in messages:
                try:
                    r = self.store.write([m], self.worker, self._clock_wall())
                    self._count(r.stored, r.duplicates, r.faults, [m])
                except StoreRejected as one:
                    self._refused_alone(m, str(one))

    def _refused_alone(self, m: Message, why: str) -> None:
        topic = m.topic if isinstance(m, Rejected) else f"{self.settings.prefix}/{m.device}"
        bad = Rejected(Fault.UNSTORABLE, topic, why)
        log.error("ingest %s: the database refused a message on %s (%s); counted as "
                  "unstorable and acknowledged", self.worker, topic, why)
        r = self.store.write([bad], self.worker, self._clock_wall())  # StoreUnavailable: retry
        self._count(r.stored, r.duplicates, r.faults, [bad])

    def _count(self, stored: int, duplicates: int, faults: Mapping[str, int],
               messages: Sequence[Message]) -> None:
        for w in (self.stats, self._window):
            w.stored += stored
            w.duplicates += duplicates
            w.faults.update(faults)
            w.batches += 1
        for m in messages:
            if isinstance(m, Rejected) and m.fault.value not in self._examples:
                self._examples[m.fault.value] = f"{m.topic}: {m.detail}"

    def _ack(self, batch: Sequence[_Incoming]) -> None:
        """PUBACK each stored message, in arrival order (as MQTT requires), but only those
        that arrived on the current connection. After a reconnect the broker sends every
        message left unacknowledged again, with its packet id: that copy is stored (a
        duplicate) and acknowledged. Acknowledging the old copy too could acknowledge,
        under the same packet id reused by then, a later message not yet stored."""
        generation = self._generation
        for item in batch:
            if item.qos > 0 and item.generation == generation:
                self._client.ack(item.mid, item.qos)
                self.stats.acked += 1

    def _report(self, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now < self._next_report:
            return
        self._next_report = now + self.settings.report_interval_s
        w, self._window = self._window, WorkerStats()
        if w.stored or w.duplicates or final:
            log.info("ingest %s: %d alert(s) stored, %d duplicate(s) dropped%s", self.worker,
                     w.stored, w.duplicates, " (since the last report)" if not final else
                     " (since the last report; stopping)")
        if w.faults:
            parts = [f"{name} {n} (e.g. {self._examples.get(name, '?')[:160]})"
                     for name, n in sorted(w.faults.items())]
            log.warning("ingest %s: rejected %d message(s): %s", self.worker,
                        sum(w.faults.values()), "; ".join(parts))
            self._examples.clear()


def open_store(url: str, stop: threading.Event, retry_s: float = 5.0) -> Store | None:
    """The writable store at ``url``, migrated; waits while the database cannot be reached
    (logged once), None if ``stop`` is set first. StoreError for a URL or database that
    cannot be used at all."""
    store = Store(url)
    warned = False
    while True:
        try:
            return store.open()
        except StoreUnavailable as exc:
            if not warned:
                log.error("ingest: cannot reach the database %s (%s); nothing is consumed "
                          "until it answers; retrying every %.0f s", shown(store.url), exc,
                          retry_s)
                warned = True
        if stop.wait(retry_s):
            store.close()
            return None


def run_worker(settings: IngestSettings, url: str, stop: threading.Event,
               supervised: bool = False) -> int:
    """One worker in this process: open the store, then ingest until ``stop``
    (``supervised``: started by :func:`supervise`, and stops when that process is gone)."""
    store = open_store(url, stop)
    if store is None:
        return 0
    try:
        ingester = Ingester(settings, store, supervised=supervised)
        code = ingester.run(stop)
        print(json.dumps({"worker": ingester.worker, **ingester.stats.as_dict()}), flush=True)
        return code
    finally:
        store.close()


def supervise(commands: Sequence[Sequence[str]], stop: threading.Event,
              restart_min_s: float = 1.0, restart_max_s: float = 30.0) -> int:
    """Run one worker process per command until ``stop``; restart a worker that dies (its
    persistent session holds its share of the alerts until it comes back with its client id).
    A worker exiting with 2 (bad input) stops them all with 2."""
    procs: dict[int, subprocess.Popen[bytes]] = {}
    next_start = dict.fromkeys(range(len(commands)), 0.0)
    backoff = dict.fromkeys(range(len(commands)), restart_min_s)
    code = 0
    try:
        while not stop.is_set():
            now = time.monotonic()
            for i, cmd in enumerate(commands):
                p = procs.get(i)
                if p is not None and p.poll() is not None:
                    del procs[i]
                    if p.returncode == 2:
                        log.error("ingest: worker %d exited with 2 (bad input); stopping", i + 1)
                        code = 2
                        stop.set()
                        break
                    log.error("ingest: worker %d exited with %s; restarting in %.0f s", i + 1,
                              p.returncode, backoff[i])
                    next_start[i] = now + backoff[i]
                    backoff[i] = min(restart_max_s, backoff[i] * 2)
                if i not in procs and now >= next_start[i] and not stop.is_set():
                    procs[i] = subprocess.Popen(list(cmd))
            stop.wait(0.2)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30.0
        for p in procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    return code
