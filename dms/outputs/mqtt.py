"""The one MQTT communicator: status with Last Will, retained state, durable alerts, rate-limited
telemetry, signed commands (verified here, then run by the one dispatch of
:mod:`dms.commands`), optional Home Assistant discovery.

Threads: the caller (service loop) calls ``publish_*``; paho's network thread runs the
callbacks; a writer thread makes every durable write (an alert's row in the outbox, offline
telemetry), so the loop never waits on the disk for longer than ``alert_write_wait_s``; one
worker thread owns the hand-over of outbox rows to paho and the deletion of acknowledged rows.
Callbacks only put items on the worker's queue (paho calls ``on_publish`` with its own lock
held, so taking ours there could deadlock with ``publish``). Status queries never wait for a
write under way: they read the last figures when the outbox is busy (a stalled disk).

Delivery (see docs/mqtt.md): alerts are committed to the outbox before publishing and deleted
on PUBACK: at-least-once; a crash between PUBACK and delete re-sends the alert on restart, so
subscribers de-duplicate on ``(stream, seq)``.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from dms.commands import CommandRejected, Commands, Handler, check_name, short_repr
from dms.engine.events import Event, Phase, Reason
from dms.errors import DmsError
from dms.json_safe import json_line, jsonable
from dms.outputs.command_auth import CommandVerifier, command_key, is_envelope, request_id_of
from dms.outputs.outbox import Outbox, OutboxStats
from dms.outputs.settings import MqttSettings
from dms.outputs.topics import Topics

log = logging.getLogger(__name__)

PAYLOAD_SCHEMA = 1
_STOP = "stop"  # on either queue: the thread ends
STATUS_WAIT_S = 0.05  # a status query waits this long for a busy outbox, then reads the last
STOP_WRITE_WAIT_S = 5.0  # on stop, alerts not yet written get this long, then are spilled
MAX_OFFLINE_TELEMETRY_QUEUED = 100  # telemetry waiting for the writer beyond this is dropped


class Refusals:
    """Refused commands: counted; logged at once when they are rare, else as one line per
    ``LOG_EVERY_S`` with their number and the last reason; answered at most
    ``REPLIES_PER_S`` a second after a burst of ``REPLY_BURST``. A flood costs a count, not a
    log line and a reply each."""

    LOG_EVERY_S = 10.0
    REPLIES_PER_S = 5.0
    REPLY_BURST = 20.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._unlogged = 0
        self._last = ""
        self._logged_at = -math.inf
        self._tokens = self.REPLY_BURST
        self._tokens_at = clock()

    def refused(self, what: str) -> None:
        """Count one refusal (``what``: the command and why)."""
        with self._lock:
            self._unlogged += 1
            self._last = what
        self.flush()

    def flush(self) -> None:
        """Log what was counted, when a line is due (also called on the worker's ticks)."""
        with self._lock:
            now = self._clock()
            if not self._unlogged or now - self._logged_at < self.LOG_EVERY_S:
                return
            n, last, since = self._unlogged, self._last, now - self._logged_at
            self._unlogged, self._logged_at = 0, now
        if n == 1:
            log.warning("mqtt command rejected: %s", last)
        else:
            log.warning("mqtt: %d commands rejected in the last %.0f s; the last: %s", n,
                        min(since, self.LOG_EVERY_S), last)

    def may_reply(self) -> bool:
        """A refusal may be answered now (a token of the reply budget)."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.REPLY_BURST,
                               self._tokens + (now - self._tokens_at) * self.REPLIES_PER_S)
            self._tokens_at = now
            if self._tokens < 1.0:
                return False
            self._tokens -= 1.0
            return True


@dataclass(frozen=True, slots=True)
class _Ack:
    """paho acknowledged a message (PUBACK): for the worker thread."""

    mid: int
    reason: ReasonCode


class _Unwritten:
    """An alert handed to the writer thread, until it has its row (and seq) in the outbox."""

    __slots__ = ("body", "done", "seq", "wall_s")

    def __init__(self, body: dict[str, object], wall_s: float) -> None:
        self.body = body
        self.wall_s = wall_s
        self.done = threading.Event()
        self.seq: int | None = None


# -- payloads ----------------------------------------------------------------------------------


def dumps(obj: object) -> bytes:
    return json_line(obj).encode()


# -- the communicator --------------------------------------------------------------------------


class MqttCommunicator:
    """Everything the service sends to or receives from the broker.

    ``state_dir`` holds the outbox database. ``environ`` is read once, when the client is
    built in :meth:`start` (default: ``os.environ``). ``on_outbox_over_bound`` is called (from
    the caller's thread) when alerts alone exceed the outbox bound.
    """

    def __init__(self, settings: MqttSettings, state_dir: Path | str, *,
                 environ: Mapping[str, str] | None = None,
                 clock_wall: Callable[[], float] = time.time,
                 on_outbox_over_bound: Callable[[OutboxStats], None] | None = None,
                 sw_version: str = "",
                 record_clock: Callable[[], float] | None = None) -> None:
        self.settings = settings
        self.state_dir = Path(state_dir)
        self._environ = environ
        self._clock_wall = clock_wall
        self._on_over_bound = on_outbox_over_bound
        self._sw_version = sw_version
        # t_s of the records the communicator makes itself (outbox_damaged): the run's clock,
        # as the engine's records (default: seconds since this communicator was made)
        started = time.monotonic()
        self._record_clock = record_clock or (lambda: time.monotonic() - started)
        device_id = settings.device_id or socket.gethostname().split(".")[0]
        self.topics = Topics(settings.prefix, device_id)
        self._refusals = Refusals()
        self.commands = Commands({"state": lambda _c: self._republish_state()},
                                 on_refused=lambda _origin, name, why: self._refusals.refused(
                                     f"{short_repr(name)}: {why}"))
        self._verifier: CommandVerifier | None = None  # None: no key, commands refused
        self._commands_off_why = "no command key configured"
        self._queue: queue.Queue[_Ack | str] = queue.Queue()  # the worker's: acks, "kick"...
        self._writes: queue.Queue[_Unwritten | bytes | str] = queue.Queue()  # the writer's
        self._unwritten: dict[int, _Unwritten] = {}  # alerts queued for the writer, by id()
        self._unwritten_lock = threading.Lock()
        self._writer: threading.Thread | None = None
        self._outbox_figures: dict[str, int] = {}  # the last outbox stats read
        self._stalled_logged = False
        self._connected = threading.Event()
        self._drained = threading.Condition()
        self._inflight: dict[int, int] = {}  # paho mid -> outbox row id (worker thread only)
        self._cursor = 0  # highest outbox row id handed to paho (worker thread only)
        self._state_payload: bytes | None = None
        self._last_telemetry_t_s: float | None = None
        self._client: mqtt.Client | None = None
        self._outbox: Outbox | None = None
        self._worker: threading.Thread | None = None
        self._stopping = False
        self._connect_failures = 0
        self._run_id = uuid.uuid4().hex[:8]
        self._damage_n = 0
        self._damage_open: list[tuple[int, float]] = []  # outbox damage not yet cleared
        self._counters = {"alerts_sent": 0, "alerts_acked": 0, "alerts_rejected": 0,
                          "alerts_failed": 0,
                          "telemetry_sent": 0, "telemetry_dropped": 0, "commands_ok": 0,
                          "commands_rejected": 0, "connects": 0}

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> MqttCommunicator:
        """Open the outbox, build the client and connect in the background (never blocks on
        the broker: the outbox keeps alerts until it is reachable)."""
        if self._outbox is not None:
            return self
        s = self.settings
        self._outbox = Outbox(self.state_dir / s.outbox_file, max_messages=s.outbox_max_messages,
                              max_telemetry=s.outbox_max_telemetry, clock_wall=self._clock_wall,
                              spill_dir=spill_dir(s, os.environ if self._environ is None
                                                  else self._environ),
                              alert_topic=self.topics.alert)
        pending = len(self._outbox)
        if pending:
            log.info("outbox %s: %d message(s) left by a previous run will be sent first",
                     self._outbox.path, pending)
        client = self._client = self._build_client(os.environ if self._environ is None
                                                   else self._environ)
        self._outbox_figures = self._outbox.stats().as_dict()
        self._writer = threading.Thread(target=self._write_loop, name="dms-mqtt-writer",
                                        daemon=True)
        self._writer.start()
        for event in self._outbox.take_spilled_events():  # never given a seq: they get one
            self.publish_alert(event, wait_s=0.0)
        self._worker = threading.Thread(target=self._work, name="dms-mqtt-outbox", daemon=True)
        self._worker.start()
        client.connect_async(s.host, s.port, keepalive=s.keepalive_s)
        client.loop_start()
        return self

    def _build_client(self, environ: Mapping[str, str]) -> mqtt.Client:
        s = self.settings
        client_id = s.client_id or f"dms-{self.topics.device_id}"
        protocol = mqtt.MQTTv5 if s.protocol == "5" else mqtt.MQTTv311
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=protocol)
        # paho logs expected states (e.g. "not connected" while the broker is away) as errors;
        # our callbacks report connection changes, so paho's own lines go to debug
        paho_log = logging.getLogger(__name__ + ".paho")
        client.on_log = lambda _c, _u, _level, text: paho_log.debug("%s", text)
        client.reconnect_delay_set(s.reconnect_min_s, s.reconnect_max_s)
        client.max_inflight_messages_set(s.max_inflight)
        client.will_set(self.topics.status, "offline", qos=1, retain=True)
        if s.username:
            password = environ.get(s.password_env) if s.password_env else None
            if s.password_env and password is None:
                log.warning("mqtt: user %r but environment variable %s is not set; connecting "
                            "without a password", s.username, s.password_env)
            client.username_pw_set(s.username, password)
        if s.tls:
            self._setup_tls(client)
        self._setup_command_auth(environ)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    def _setup_tls(self, client: mqtt.Client) -> None:
        s = self.settings
        for what, path in (("tls_ca_file", s.tls_ca_file), ("tls_cert_file", s.tls_cert_file),
                           ("tls_key_file", s.tls_key_file)):
            if path and not Path(path).is_file():
                raise DmsError(f"mqtt.{what}: {path} does not exist or is not a file")
        try:
            client.tls_set(ca_certs=s.tls_ca_file or None, certfile=s.tls_cert_file or None,
                           keyfile=s.tls_key_file or None)
        except (OSError, ValueError) as exc:
            raise DmsError(f"mqtt: TLS set-up failed: {exc}") from exc
        client.tls_insecure_set(s.tls_insecure)

    def _setup_command_auth(self, environ: Mapping[str, str]) -> None:
        s = self.settings
        try:
            key = command_key(environ, s.command_key_env)
        except DmsError as exc:
            key = None
            self._commands_off_why = str(exc)
            log.error("mqtt: %s; every command is refused", exc)
        if key is None:
            if s.command_key_env and s.command_key_env not in environ:
                self._commands_off_why = (f"commands are off: no command key (environment "
                                          f"variable {s.command_key_env} is not set)")
                log.info("mqtt: %s", self._commands_off_why)
            return
        self._verifier = CommandVerifier(key, self.topics.device_id, s.command_window_s,
                                         clock_wall=self._clock_wall)
        log.info("mqtt: commands accepted when signed with the key in $%s", s.command_key_env)

    def stop(self, drain_timeout_s: float = 0.0) -> None:
        """Optionally wait for the outbox to drain, publish ``offline``, disconnect, close.

        Whatever is still in the outbox is sent by the next process using the same state dir.
        Alerts the writer could not store within STOP_WRITE_WAIT_S (a stalled disk) are
        spilled (:meth:`save_unwritten`) and the outbox is left for the process exit to
        release: a stop never hangs on the disk.
        """
        if self._outbox is None or self._stopping:
            return
        if drain_timeout_s > 0:
            self.wait_drained(drain_timeout_s)
        self._stopping = True
        client = self._paho
        if self._connected.is_set():
            try:
                info = client.publish(self.topics.status, "offline", qos=1, retain=True)
                info.wait_for_publish(timeout=2.0)
            except (RuntimeError, ValueError) as exc:
                log.debug("mqtt: offline status not confirmed: %s", exc)
        client.disconnect()
        client.loop_stop()
        self._queue.put(_STOP)
        self._writes.put(_STOP)
        if self._writer is not None:
            self._writer.join(timeout=STOP_WRITE_WAIT_S)
            if self._writer.is_alive():
                saved = self.save_unwritten()
                log.error("mqtt: the state directory did not take the alerts within %g s "
                          "(a stalled disk?); %d undelivered alert(s) spilled to %s for the "
                          "next start", STOP_WRITE_WAIT_S, saved, self._outbox.spill_path)
                return
        if self._worker is not None:
            self._worker.join(timeout=5.0)
        left = len(self._outbox)
        lost = self._outbox.close()  # checks the file once more; logs what it cannot keep
        if left - lost > 0:
            log.warning("mqtt: %d message(s) remain in %s for the next run", left - lost,
                        self._outbox.path)

    def save_unwritten(self) -> int:
        """Spill every undelivered alert, also those still waiting for the writer, to the
        spill file now (another file system), without waiting for a write under way: what
        a stop does before the process may be ended. Returns how many were written."""
        if self._outbox is None:
            return 0
        with self._unwritten_lock:
            waiting = [u.body for u in self._unwritten.values()]
        return self._outbox.spill_now(waiting)

    def __enter__(self) -> MqttCommunicator:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # -- publishing ----------------------------------------------------------------------------

    @property
    def _paho(self) -> mqtt.Client:
        assert self._client is not None, "start() first"
        return self._client

    def _require_started(self) -> Outbox:
        if self._outbox is None or self._stopping:
            raise RuntimeError("MqttCommunicator is not running (call start() first)")
        return self._outbox

    def publish_alert(self, event: Mapping[str, object],
                      wait_s: float | None = None) -> int | None:
        """Store ``event`` (a JSON-able dict, e.g. ``Event.to_dict()``) durably, then send it.

        The writer thread stores it; this waits for that at most ``wait_s`` seconds (None:
        until it is stored) and returns its sequence number, or None when the wait ran out.
        It never waits while earlier alerts still wait for the disk (a stalled disk costs the
        caller one ``wait_s``, not one per alert). An alert not yet stored is kept in memory,
        stored and sent as soon as the disk allows, and spilled if the process stops first.
        While the disk refuses writes (read-only state directory, disk full) the outbox keeps
        alerts in memory and publishes them from there (see :mod:`.outbox`).
        """
        self._require_started()
        item = _Unwritten(jsonable(event), self._clock_wall())
        with self._unwritten_lock:
            behind = bool(self._unwritten)
            self._unwritten[id(item)] = item
        self._writes.put(item)
        if wait_s is not None and (behind or wait_s <= 0):
            return None
        if item.done.wait(wait_s):
            self._stalled_logged = False
            return item.seq
        if not self._stalled_logged:
            self._stalled_logged = True
            log.error("mqtt: an alert was not on disk within %g s (a stalled disk?); alerts "
                      "wait in memory and are stored and sent as soon as the disk answers",
                      wait_s)
        return None

    def _store_alert(self, item: _Unwritten) -> None:
        """The writer thread: the alert's row (and seq) in the outbox."""
        outbox = self._outbox
        assert outbox is not None
        body = item.body

        def build(stream: str, seq: int) -> bytes:
            return dumps({"schema": PAYLOAD_SCHEMA, "device": self.topics.device_id,
                          "stream": stream, "seq": seq,
                          "queued_wall_s": round(item.wall_s, 3), "event": body})

        try:
            result = outbox.put_alert(self.topics.alert, build, qos=1)
        except Exception:  # never expected (the payload is JSON-able): logged, counted
            self._counters["alerts_failed"] += 1
            log.exception("mqtt: alert %s could not be stored", body.get("event_id")
                          if isinstance(body, dict) else "?")
        else:
            item.seq = result.row.seq
            if result.over_bound:
                stats = outbox.stats()
                log.error("mqtt outbox %s holds %d undelivered alerts, above its bound of %d; "
                          "keeping them all (alerts are never dropped); %d over so far",
                          outbox.path, stats.pending_alerts, outbox.max_messages,
                          stats.alerts_over_bound)
                if self._on_over_bound is not None:
                    self._on_over_bound(stats)
        with self._unwritten_lock:
            self._unwritten.pop(id(item), None)
        item.done.set()
        self._queue.put("kick")

    def _write_loop(self) -> None:
        while True:
            item = self._writes.get()
            if item is _STOP:
                return
            try:
                if isinstance(item, _Unwritten):
                    self._store_alert(item)
                elif isinstance(item, bytes) and self._outbox is not None and \
                        self._outbox.put_telemetry(self.topics.telemetry, item, qos=0) is None:
                    self._counters["telemetry_dropped"] += 1
                else:
                    self._queue.put("kick")
            except Exception:  # keep the writer alive; the outbox keeps the data
                log.exception("mqtt writer: unexpected error")

    def publish_state(self, state: Mapping[str, object]) -> None:
        """Publish the retained state (also re-sent on every reconnect)."""
        self._require_started()
        payload = dumps({"schema": PAYLOAD_SCHEMA, "device": self.topics.device_id,
                         "wall_s": round(self._clock_wall(), 3), "state": state})
        self._state_payload = payload
        if self._connected.is_set():
            self._paho.publish(self.topics.state, payload, qos=1, retain=True)

    def publish_telemetry(self, data: Mapping[str, object], t_s: float) -> bool:
        """Send pose telemetry at QoS 0 if at least ``telemetry_interval_s`` passed since the
        last one (``t_s``: monotonic seconds). Offline, it is queued in the outbox while there
        is room. Returns whether it was sent or queued."""
        self._require_started()
        interval = self.settings.telemetry_interval_s
        if interval <= 0:
            return False
        last = self._last_telemetry_t_s
        if last is not None and t_s - last < interval:
            return False
        self._last_telemetry_t_s = t_s
        payload = dumps({"schema": PAYLOAD_SCHEMA, "device": self.topics.device_id, "t_s": t_s,
                         "wall_s": round(self._clock_wall(), 3), "telemetry": data})
        if self._connected.is_set():
            self._paho.publish(self.topics.telemetry, payload, qos=0)
            self._counters["telemetry_sent"] += 1
            return True
        if self._writes.qsize() >= MAX_OFFLINE_TELEMETRY_QUEUED:  # the writer is behind
            self._counters["telemetry_dropped"] += 1
            return False
        self._writes.put(payload)  # stored in the outbox while there is room
        return True

    # -- commands ------------------------------------------------------------------------------

    def set_command_handler(self, name: str, handler: Handler) -> None:
        """Route command ``name`` to ``handler(command)`` (see :class:`dms.commands.Commands`).

        Handlers run on paho's network thread: they must return quickly (hand work to the
        service loop).
        """
        self.commands.set(name, handler)

    def set_command_handlers(self, handlers: Mapping[str, Handler]) -> None:
        for name, handler in handlers.items():
            self.set_command_handler(name, handler)

    def _verified_args(self, name: str, payload: bytes) -> dict[str, object]:
        """The arguments of a command once its envelope is signed and fresh
        (CommandRejected if not). Without a key every command is refused (the buzzer must
        not be silenced by anyone who can reach the broker)."""
        check_name(name)
        text = payload.decode("utf-8", errors="strict").strip()
        if self._verifier is None:
            raise CommandRejected(f"{name}: refused: {self._commands_off_why}")
        return self._verifier.verify(name, text)

    def _dispatch(self, name: str, payload: bytes) -> dict[str, object]:
        """Verify, then run through the one dispatch; the reply. A refusal echoes the
        request id its (even unverified) body names, so the sender can match it."""
        try:
            args = self._verified_args(name, payload)
        except (CommandRejected, ValueError) as exc:  # UnicodeDecodeError is a ValueError
            self._counters["commands_rejected"] += 1
            rid = (exc.request_id if isinstance(exc, CommandRejected) else None) or \
                request_id_of(payload)
            return self.commands.refuse("mqtt", name, rid, str(exc))
        out = self.commands.run(name, args, "mqtt", request_id_of(payload))
        self._counters["commands_ok" if out["ok"] else "commands_rejected"] += 1
        return out

    def _republish_state(self) -> dict[str, object]:
        if self._state_payload is None:
            return {"published": False}
        self._paho.publish(self.topics.state, self._state_payload, qos=1, retain=True)
        return {"published": True}

    # -- paho callbacks (network thread) -------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _userdata: object, _flags: mqtt.ConnectFlags,
                    reason_code: ReasonCode, _properties: Properties | None) -> None:
        if reason_code.is_failure:
            log.error("mqtt: broker %s:%d refused the connection: %s", self.settings.host,
                      self.settings.port, reason_code)
            return
        self._connect_failures = 0
        self._counters["connects"] += 1
        log.info("mqtt: connected to %s:%d as %s", self.settings.host, self.settings.port,
                 self.topics.base)
        client.subscribe(self.topics.command_filter, qos=1)
        client.publish(self.topics.status, "online", qos=1, retain=True)
        if self._state_payload is not None:
            client.publish(self.topics.state, self._state_payload, qos=1, retain=True)
        if self.settings.ha_discovery:
            configs = ha_discovery_configs(self.topics, self.settings.ha_discovery_prefix,
                                           self._sw_version)
            for topic, config in configs:
                client.publish(topic, dumps(config), qos=1, retain=True)
        self._connected.set()
        self._queue.put("connected")

    def _on_connect_fail(self, _client: mqtt.Client, _userdata: object) -> None:
        self._connect_failures += 1
        level = logging.WARNING if self._connect_failures == 1 else logging.DEBUG
        log.log(level, "mqtt: cannot reach broker %s:%d (attempt %d); alerts wait in the outbox",
                self.settings.host, self.settings.port, self._connect_failures)

    def _on_disconnect(self, _client: mqtt.Client, _userdata: object,
                       _flags: mqtt.DisconnectFlags, reason_code: ReasonCode,
                       _properties: Properties | None) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        if was and not self._stopping:
            log.warning("mqtt: disconnected (%s); reconnecting, alerts wait in the outbox",
                        reason_code)

    def _on_publish(self, _client: mqtt.Client, _userdata: object, mid: int,
                    reason_code: ReasonCode, _properties: Properties) -> None:
        self._queue.put(_Ack(mid, reason_code))

    def _on_message(self, client: mqtt.Client, _userdata: object,
                    message: mqtt.MQTTMessage) -> None:
        """A command: only a well-formed signed envelope is looked at further and answered;
        anything else is counted (a flood never costs a log line or a reply each)."""
        name = self.topics.command_name(message.topic)
        if name is None:
            return
        payload = bytes(message.payload)
        if not is_envelope(payload, self.settings.command_max_bytes):
            self._counters["commands_rejected"] += 1
            self._refusals.refused(f"{short_repr(name)}: not a signed command (no reply)")
            return
        if message.retain:
            # a retained command would be re-applied at every (re)connect, e.g. re-mute the
            # buzzer after each restart: the broker keeps it, so it is never acted upon
            self._counters["commands_rejected"] += 1
            self._refusals.refused(f"{short_repr(name)}: retained message")
            reply: dict[str, object] = {"command": name, "request_id": None, "ok": False,
                     "error": f"{short_repr(name)}: retained command ignored (publish commands "
                              "without the retain flag)"}
        else:
            reply = self._dispatch(name, payload)
        if reply["ok"] or self._refusals.may_reply():
            client.publish(self.topics.reply, dumps(
                {"schema": PAYLOAD_SCHEMA, "device": self.topics.device_id,
                 "wall_s": round(self._clock_wall(), 3), **reply}), qos=1)

    # -- outbox worker -------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            try:
                item: _Ack | str = self._queue.get(timeout=0.5)
            except queue.Empty:
                item = "tick"
            if item == _STOP:
                return
            try:
                self._refusals.flush()
                if isinstance(item, _Ack):
                    self._handle_ack(item.mid, item.reason)
                assert self._outbox is not None
                # finds a damaged file, writes what a refusing disk kept back (rate-limited)
                self._outbox.sync()
                self._report_outbox_damage(self._outbox)
                self._fill()
                self._outbox_figures = self._outbox.stats().as_dict()
            except Exception:  # keep the worker alive; the outbox keeps the data
                log.exception("mqtt outbox worker: unexpected error")

    def _report_outbox_damage(self, outbox: Outbox) -> None:
        """Publish a ``system_degraded`` / ``outbox_damaged`` record for each damage the outbox
        found, and its ``cleared`` record once the outbox has a usable file again."""
        for why in outbox.take_damage():
            self._damage_n += 1
            now = self._record_clock()
            self._damage_open.append((self._damage_n, now))
            record = outbox_damaged_record(self._damage_n, Phase.RAISED, now, now,
                                           self._run_id)
            self.publish_alert(record, wait_s=0.0)
            log.error("mqtt: system_degraded (outbox_damaged) raised: %s", why)
        if self._damage_open and outbox.healthy:
            for n, started in self._damage_open:
                self.publish_alert(outbox_damaged_record(n, Phase.CLEARED, self._record_clock(),
                                                         started, self._run_id), wait_s=0.0)
            self._damage_open.clear()

    def _handle_ack(self, mid: int, reason_code: ReasonCode) -> None:
        row_id = self._inflight.pop(mid, None)
        if row_id is None:
            return  # status, state, replies: not from the outbox
        outbox = self._outbox
        assert outbox is not None
        if reason_code.is_failure:
            self._counters["alerts_rejected"] += 1
            log.error("mqtt: broker refused outbox message %d (%s); check the broker ACL for "
                      "%s; the message is dropped", row_id, reason_code, self.topics.alert)
        else:
            self._counters["alerts_acked"] += 1
        outbox.delete(row_id)
        with self._drained:
            self._drained.notify_all()

    def _fill(self) -> None:
        outbox = self._outbox
        assert outbox is not None
        room = self.settings.max_inflight - len(self._inflight)
        if room <= 0 or not self._connected.is_set():
            return
        for row in outbox.pending(after_id=self._cursor, limit=room):
            try:
                info = self._paho.publish(row.topic, row.payload, qos=row.qos)
            except ValueError as exc:  # a topic or payload no broker can take: never block
                self._counters["alerts_rejected"] += 1
                log.error("mqtt: outbox row %d can never be published (%s); dropped",
                          row.id, exc)
                outbox.delete(row.id)
                self._cursor = row.id
                continue
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                log.warning("mqtt: publish of outbox row %d failed (%s); will retry", row.id,
                            mqtt.error_string(info.rc))
                return
            # paho keeps QoS >= 1 messages across reconnects and re-sends them itself, so a
            # row is handed over once per process; a new process replays the whole outbox.
            self._inflight[info.mid] = row.id
            self._cursor = row.id
            self._counters["alerts_sent" if row.seq is not None else "telemetry_sent"] += 1

    # -- queries -------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    def wait_drained(self, timeout_s: float) -> bool:
        """Wait at most ``timeout_s`` for every alert to be stored and every outbox row to be
        acknowledged; True if nothing is left. Never blocks longer on a stalled disk."""
        outbox = self._require_started()
        deadline = time.monotonic() + timeout_s
        with self._drained:
            while True:
                left = deadline - time.monotonic()
                if not self._unwritten and outbox.pending_count(max(0.0, min(left, 0.1))) == 0:
                    return True
                if left <= 0:
                    return False
                self._drained.wait(min(left, 0.1))

    flush = wait_drained

    def stats(self) -> dict[str, object]:
        """Counters and the outbox's figures; never waits for a write under way (then the
        last figures read, and ``outbox_busy`` true)."""
        out: dict[str, object] = dict(self._counters)
        out["connected"] = self.connected
        if self._outbox is not None and not self._stopping:
            fresh = self._outbox.try_stats(STATUS_WAIT_S)
            if fresh is not None:
                self._outbox_figures = fresh.as_dict()
            out["outbox"] = dict(self._outbox_figures, alerts_unwritten=len(self._unwritten),
                                 outbox_busy=int(fresh is None))
        return out


def spill_dir(settings: MqttSettings, environ: Mapping[str, str]) -> Path | None:
    """Where the outbox spills alerts the state directory refused: the setting, else
    systemd's RuntimeDirectory, else a private folder in /dev/shm (RAM: it survives a
    process restart, not a reboot); None when none of these exists."""
    if settings.spill_dir:
        return Path(settings.spill_dir)
    runtime = environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if runtime:
        return Path(runtime)
    shm = Path("/dev/shm")
    return shm / f"dms-{os.getuid()}" if shm.is_dir() else None


def outbox_damaged_record(n: int, phase: Phase, t_s: float, started_t_s: float,
                          run_id: str) -> dict[str, object]:
    """A ``system_degraded`` / ``outbox_damaged`` record saying the outbox file was damaged
    and set aside; ``alert_id`` -1000 - n (distinct from the service's own records)."""
    return Event.system(Reason.OUTBOX_DAMAGED, phase, t_s, started_t_s, 1, -1000 - n,
                        f"{run_id}-outbox{n}-{phase.value}").to_dict()


def ha_discovery_configs(topics: Topics, discovery_prefix: str,
                         sw_version: str = "") -> list[tuple[str, dict[str, object]]]:
    """Home Assistant MQTT discovery configs (retained), reading the ``state`` topic."""
    node = topics.ha_node_id()
    device = {"identifiers": [node], "name": f"DMS {topics.device_id}", "manufacturer": "dms",
              "model": "driver monitor"}
    if sw_version:
        device["sw_version"] = sw_version
    common = {"availability_topic": topics.status, "payload_available": "online",
              "payload_not_available": "offline", "device": device}
    entities: list[tuple[str, str, dict[str, object]]] = [
        ("sensor", "driver_state", {"name": "Driver state", "state_topic": topics.state,
                                    "value_template": "{{ value_json.state.driver_state }}"}),
        ("binary_sensor", "calibrated", {
            "name": "Calibrated", "state_topic": topics.state,
            "value_template": "{{ 'ON' if value_json.state.calibrated else 'OFF' }}"}),
        ("sensor", "fps", {"name": "Frame rate", "state_topic": topics.state,
                           "unit_of_measurement": "fps", "state_class": "measurement",
                           "value_template": "{{ value_json.state.fps }}"}),
    ]
    out = []
    for component, object_id, config in entities:
        payload = {**common, **config, "unique_id": f"{node}_{object_id}",
                   "object_id": f"{node}_{object_id}"}
        out.append((topics.ha_config(discovery_prefix, component, object_id), payload))
    return out
