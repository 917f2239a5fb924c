"""What a message on a fleet topic is (dms.fleet.payloads): the shapes the devices publish
(docs/mqtt.md) are read, everything else is rejected with its reason, nothing raises."""

from __future__ import annotations

import json

import pytest

from dms.fleet.payloads import Alert, Fault, Rejected, State, Status, classify, split_topic
from dms.outputs.mqtt import PAYLOAD_SCHEMA

MAX = 65_536


def alert(**over: object) -> bytes:
    doc: dict[str, object] = {"schema": 1, "device": "cab-7", "stream": "s" * 32, "seq": 42,
                              "queued_wall_s": 1795260382.083,
                              "event": {"type": "distraction", "reason": "long_glance",
                                        "level": 2, "phase": "raised"}}
    doc.update(over)
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


def test_the_schema_is_the_devices_one() -> None:
    assert PAYLOAD_SCHEMA == 1  # dms.fleet.payloads.PAYLOAD_SCHEMA reads this version


def test_an_alert_is_read_with_its_key_and_event() -> None:
    m = classify("dms/cab-7/alert", alert(), "dms", MAX)
    assert isinstance(m, Alert)
    assert (m.device, m.stream, m.seq) == ("cab-7", "s" * 32, 42)
    assert (m.type, m.reason, m.level, m.phase) == ("distraction", "long_glance", 2, "raised")
    assert m.queued_wall_s == 1795260382.083
    assert json.loads(m.payload)["seq"] == 42


def test_status_and_state() -> None:
    assert classify("dms/cab-7/status", b"online", "dms", MAX) == Status("cab-7", "online")
    assert classify("dms/cab-7/status", b"offline", "dms", MAX) == Status("cab-7", "offline")
    assert classify("dms/cab-7/status", b"", "dms", MAX) == Status("cab-7", "cleared")
    state = json.dumps({"schema": 1, "device": "cab-7", "wall_s": 5.0,
                        "state": {"driver_state": "drowsy"}}).encode()
    m = classify("dms/cab-7/state", state, "dms", MAX)
    assert isinstance(m, State) and (m.wall_s, m.driver_state) == (5.0, "drowsy")
    assert classify("fleet/dms/cab-7/alert", alert(), "fleet/dms", MAX).device == "cab-7"


@pytest.mark.parametrize("topic", ["dms//alert", "dms/cab-7/telemetry", "other/cab-7/alert",
                                   "dms/cab-7/alert/x", "dms/cab-7", "dmsx/cab-7/alert",
                                   "dms/" + "d" * 129 + "/alert"])
def test_foreign_topics(topic: str) -> None:
    m = classify(topic, alert(), "dms", MAX)
    assert isinstance(m, Rejected) and m.fault is Fault.FOREIGN_TOPIC, m
    assert split_topic(topic, "dms") is None


@pytest.mark.parametrize(("payload", "fault"), [
    (b"\xff\xfe", Fault.MALFORMED),
    (b"{not json", Fault.MALFORMED),
    (b"[1, 2]", Fault.MALFORMED),
    (b"[" * 100_000, Fault.TOO_LARGE),
    (alert(schema=...), Fault.MALFORMED),
    (alert(schema=2), Fault.WRONG_SCHEMA),
    (alert(schema="1"), Fault.WRONG_SCHEMA),
    (alert(schema=True), Fault.WRONG_SCHEMA),
    (alert(device="cab-8"), Fault.DEVICE_MISMATCH),
    (alert(seq=0), Fault.MALFORMED),
    (alert(seq=True), Fault.MALFORMED),
    (alert(seq="42"), Fault.MALFORMED),
    (alert(seq=2**63), Fault.MALFORMED),
    (alert(stream=""), Fault.MALFORMED),
    (alert(stream="a\x00b"), Fault.MALFORMED),
    (alert(stream="\ud800"), Fault.MALFORMED),  # a lone surrogate no driver can encode
    (alert(queued_wall_s="now"), Fault.MALFORMED),
    (alert(event=[]), Fault.MALFORMED),
    (alert(event={"reason": "x"}), Fault.MALFORMED),
    (alert(event={"type": "t" * 65}), Fault.MALFORMED),
])
def test_bad_alert_payloads_are_rejected_with_their_reason(payload: bytes, fault: Fault) -> None:
    m = classify("dms/cab-7/alert", payload, "dms", MAX)
    assert isinstance(m, Rejected) and m.fault is fault, m
    assert m.detail


def test_the_size_bound_is_the_setting() -> None:
    payload = alert()
    assert isinstance(classify("dms/cab-7/alert", payload, "dms", len(payload)), Alert)
    m = classify("dms/cab-7/alert", payload, "dms", len(payload) - 1)
    assert isinstance(m, Rejected) and m.fault is Fault.TOO_LARGE


def test_odd_but_readable_fields_are_kept_or_nulled() -> None:
    m = classify("dms/cab-7/alert", alert(device=..., event={"type": "x", "level": "high"}),
                 "dms", MAX)
    assert isinstance(m, Alert) and (m.level, m.reason, m.phase) == (None, "", "")
    bad_status = classify("dms/cab-7/status", b"maybe", "dms", MAX)
    assert isinstance(bad_status, Rejected) and bad_status.fault is Fault.MALFORMED
    bad_state = classify("dms/cab-7/state", b'{"schema": 1, "state": 3}', "dms", MAX)
    assert isinstance(bad_state, Rejected) and bad_state.fault is Fault.MALFORMED
