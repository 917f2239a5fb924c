"""Commands must be signed by an operator (issue 13, items 1, 2 and 14), against a real
mosquitto broker, with the real ``mosquitto_pub`` and ``dms command`` processes.

Before: any client could ``mosquitto_pub -t dms/<id>/cmd/mute -m '{"duration_s":600}'`` (ok),
a retained mute re-muted the device after every restart, a deeply nested JSON command gave a
RecursionError traceback, and a mute silenced every level.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dms.commands import CommandRejected
from dms.outputs.buzzer import Buzzer, NullLine
from dms.outputs.command_auth import CommandVerifier, sign_command, signature
from dms.outputs.mqtt import MqttCommunicator, MqttSettings
from dms.outputs.settings import BuzzerSettings
from dms.settings import SettingsError, load_settings

from broker import Broker, Collector, start_broker

pytestmark = pytest.mark.broker
ROOT = Path(__file__).resolve().parents[1]
KEY = "k" * 8 + "0123456789abcdef"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with start_broker(tmp_path / "broker") as b:
        yield b


def settings(port: int, **kw: Any) -> MqttSettings:
    base = {"host": "127.0.0.1", "port": port, "device_id": "cab1", "reconnect_min_s": 1,
            "reconnect_max_s": 1, "keepalive_s": 5}
    base.update(kw)
    return load_settings(MqttSettings, base, "mqtt")


class Device:
    """A communicator wired to a real (null-line) buzzer, as the service wires it."""

    def __init__(self, port: int, state: Path, environ: dict[str, str],
                 **kw: Any) -> None:
        self.buzzer = Buzzer(BuzzerSettings(max_mute_s=600, max_mute_per_hour_s=900),
                             NullLine(), register_atexit=False)
        self.calibrations = 0
        self.sub = Collector(port, "dms/cab1/#")
        assert self.sub.wait_for(lambda m: True)
        self.comm = MqttCommunicator(settings(port, **kw), state, environ=environ)
        self.comm.set_command_handlers({"mute": lambda c: self.buzzer.mute(c.duration_s),
                                        "calibrate": self._calibrate})
        self.comm.start()
        assert self.comm.wait_connected(10)
        # the device subscribes to cmd/# before it publishes "online" on the same connection
        assert self.sub.wait_for(lambda m: ("dms/cab1/status", b"online") in m, 10)

    def _calibrate(self, _c: Any) -> dict[str, Any]:
        self.calibrations += 1
        return {"calibration": "started"}

    def replies(self, n: int, timeout_s: float = 15) -> list[dict[str, Any]]:
        assert self.sub.wait_for(
            lambda m: len([t for t, _ in m if t.endswith("/reply")]) >= n, timeout_s), \
            self.sub.messages
        return self.sub.payloads("/reply")

    def close(self) -> None:
        self.comm.stop()
        self.sub.close()


def mosquitto_pub(port: int, topic: str, payload: bytes | str, *extra: str) -> None:
    if shutil.which("mosquitto_pub") is None:
        pytest.skip("needs mosquitto_pub (Debian package mosquitto-clients)")
    data = payload if isinstance(payload, bytes) else payload.encode()
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-q",
                    "1", "-s" if data else "-n", *extra], input=data, check=True, timeout=30)


def test_unsigned_commands_are_refused_with_the_reason(broker: Broker, tmp_path: Path) -> None:
    # no key configured: the shipped default. Before: ok true, buzzer muted for 600 s
    dev = Device(broker.port, tmp_path / "s", environ={})
    try:
        mosquitto_pub(broker.port, "dms/cab1/cmd/mute", '{"duration_s": 600}')
        mosquitto_pub(broker.port, "dms/cab1/cmd/calibrate", "")
        signed = sign_command(KEY.encode(), "cab1", "mute", {"duration_s": 5})
        mosquitto_pub(broker.port, "dms/cab1/cmd/mute", signed)  # no key: nothing verifies
        replies = dev.replies(1)
        time.sleep(0.5)  # nothing else is answered
        refused = dev.comm.stats()["commands_rejected"]
    finally:
        dev.close()
    # only a signed envelope is answered (issue 21: a flood of anything else is counted)
    assert [r["ok"] for r in dev.sub.payloads("/reply")] == [False]
    assert "DMS_COMMAND_KEY is not set" in replies[0]["error"] and refused == 3
    assert not dev.buzzer.muted() and dev.calibrations == 0

    dev = Device(broker.port, tmp_path / "s", environ={"DMS_COMMAND_KEY": KEY})
    try:  # a key is configured: an unsigned command is still refused, and not answered
        mosquitto_pub(broker.port, "dms/cab1/cmd/mute", '{"duration_s": 600}')
        deadline = time.monotonic() + 15
        while dev.comm.stats()["commands_rejected"] < 1:
            assert time.monotonic() < deadline, "the unsigned command was not refused"
            time.sleep(0.05)
    finally:
        dev.close()
    assert dev.sub.payloads("/reply") == []
    assert not dev.buzzer.muted()


def test_dms_command_signs_and_prints_the_reply(broker: Broker, tmp_path: Path) -> None:
    dev = Device(broker.port, tmp_path / "s", environ={"DMS_COMMAND_KEY": KEY})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPS_KEY": KEY}
    base = [sys.executable, "-m", "dms", "command", "--mqtt", f"127.0.0.1:{broker.port}",
            "--device", "cab1", "--key-env", "OPS_KEY", "--timeout-s", "20"]
    try:
        mute = subprocess.run(base + ["mute", "30"], capture_output=True, text=True, env=env,
                              cwd=ROOT, timeout=60)
        calibrate = subprocess.run(base + ["calibrate"], capture_output=True, text=True,
                                   env=env, cwd=ROOT, timeout=60)
        too_long = subprocess.run(base + ["mute", "9999"], capture_output=True, text=True,
                                  env=env, cwd=ROOT, timeout=60)
        wrong_key = subprocess.run(base + ["state"], capture_output=True, text=True, cwd=ROOT,
                                   env={**env, "OPS_KEY": "x" * 32}, timeout=60)
        no_key = subprocess.run(base + ["state"], capture_output=True, text=True, cwd=ROOT,
                                env={k: v for k, v in env.items() if k != "OPS_KEY"},
                                timeout=60)
    finally:
        dev.close()
    assert mute.returncode == 0, mute.stderr
    reply = json.loads(mute.stdout)
    assert reply["ok"] and reply["command"] == "mute" and reply["result"]["muted_s"] == 30
    assert dev.buzzer.muted()
    assert calibrate.returncode == 0 and dev.calibrations == 1
    assert too_long.returncode == 1 and "600" in too_long.stderr
    assert wrong_key.returncode == 1 and "bad signature" in wrong_key.stderr
    assert no_key.returncode == 2 and "OPS_KEY" in no_key.stderr


def test_replayed_stale_and_misdirected_commands_are_refused(broker: Broker,
                                                             tmp_path: Path) -> None:
    key = KEY.encode()
    t_start = time.time()
    dev = Device(broker.port, tmp_path / "s", environ={"DMS_COMMAND_KEY": KEY})
    once = sign_command(key, "cab1", "calibrate", request_id="once")
    sends = [
        ("calibrate", once),  # accepted
        ("calibrate", once),  # the same bytes again: replay
        ("calibrate", sign_command(key, "cab1", "calibrate", request_id="old",
                                   ts=time.time() - 120)),  # outside the 30 s window
        ("calibrate", sign_command(key, "cab1", "calibrate", request_id="future",
                                   ts=time.time() + 120)),
        ("calibrate", sign_command(key, "cab1", "calibrate", request_id="before-start",
                                   ts=t_start - 5)),  # within the window: sent to a restart
        ("calibrate", sign_command(key, "cab2", "calibrate", request_id="other-device")),
        ("calibrate", sign_command(key, "cab1", "mute", {"duration_s": 5},
                                   request_id="other-command")),
    ]
    body = json.loads(sign_command(key, "cab1", "mute", {"duration_s": 5},
                                   request_id="altered"))
    body["body"] = body["body"].replace('"duration_s":5', '"duration_s":500')
    sends.append(("mute", json.dumps(body).encode()))
    try:
        for name, payload in sends:
            mosquitto_pub(broker.port, f"dms/cab1/cmd/{name}", payload)
        replies = dev.replies(len(sends))
    finally:
        dev.close()
    assert [(r["request_id"], r["ok"]) for r in replies] == [
        ("once", True), ("once", False), ("old", False), ("future", False),
        ("before-start", False), ("other-device", False), ("other-command", False),
        ("altered", False)]
    errors = [r["error"] for r in replies[1:]]
    assert "nonce already used" in errors[0]
    assert "outside the 30 s window" in errors[1] and "outside the 30 s window" in errors[2]
    assert "before this device started" in errors[3]
    assert "signed for device 'cab2'" in errors[4]
    assert "signed for command 'mute'" in errors[5]
    assert "bad signature" in errors[6]
    assert dev.calibrations == 1 and not dev.buzzer.muted()


def test_retained_commands_are_ignored_after_a_restart(broker: Broker, tmp_path: Path) -> None:
    # before: after one `mosquitto_pub -r ... cmd/mute`, every restart re-muted the device
    environ = {"DMS_COMMAND_KEY": KEY}
    mosquitto_pub(broker.port, "dms/cab1/cmd/mute",
                  sign_command(KEY.encode(), "cab1", "mute", {"duration_s": 60},
                               request_id="retained"), "-r")
    for _ in range(2):  # two "restarts" of the device
        dev = Device(broker.port, tmp_path / "s", environ=environ)
        try:
            (reply,) = dev.replies(1)
            time.sleep(0.5)  # nothing else arrives
        finally:
            dev.close()
        assert reply["ok"] is False and "retained command ignored" in reply["error"]
        assert not dev.buzzer.muted()


def test_a_deeply_nested_command_is_refused_without_a_traceback(
        broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dev = Device(broker.port, tmp_path / "s", environ={"DMS_COMMAND_KEY": KEY})
    key = KEY.encode()
    deep = "[" * 2000 + "]" * 2000
    try:
        with caplog.at_level(logging.WARNING, logger="dms.outputs.mqtt"):
            mosquitto_pub(broker.port, "dms/cab1/cmd/mute", deep)  # before: RecursionError
            body = json.dumps({"device": "cab1", "command": "mute", "ts": time.time(),
                               "nonce": "n" * 16})
            body = body[:-1] + ', "duration_s": ' + "[" * 1500 + "]" * 1500 + "}"
            nested_body = json.dumps({"body": body, "sig": signature(key, body.encode())})
            mosquitto_pub(broker.port, "dms/cab1/cmd/mute", nested_body)
            replies = dev.replies(1)
            alive = dev.comm.publish_alert({"still": "alive"})
            refused = dev.comm.stats()["commands_rejected"]
    finally:
        dev.close()
    assert [r["ok"] for r in replies] == [False] and refused == 2  # the bare one: no reply
    assert "nested too deeply" in replies[0]["error"]  # signed, but its body is too deep
    assert not any(r.exc_info for r in caplog.records)  # rejected, not a traceback
    assert alive == 1


def test_the_nonce_memory_is_bounded_and_fails_closed() -> None:
    now = [1000.0]
    key = KEY.encode()
    v = CommandVerifier(key, "cab1", 30.0, max_nonces=3, clock_wall=lambda: now[0])

    def send(nonce: str) -> None:
        v.verify("state", sign_command(key, "cab1", "state", ts=now[0], nonce=nonce).decode())

    for i in range(3):
        send(f"nonce-{i:04d}")
    with pytest.raises(CommandRejected, match="more than 3 commands"):
        send("nonce-0003")  # full of live nonces: refused, none forgotten early
    with pytest.raises(CommandRejected, match="already used"):
        send("nonce-0000")
    now[0] += 31  # the window has passed: old nonces are forgotten, their ts is stale anyway
    send("nonce-0004")
    assert v.nonces_remembered == 1


def test_a_short_key_turns_commands_off_with_the_reason(broker: Broker,
                                                        tmp_path: Path) -> None:
    dev = Device(broker.port, tmp_path / "s", environ={"DMS_COMMAND_KEY": "short"})
    try:
        mosquitto_pub(broker.port, "dms/cab1/cmd/mute",
                      sign_command(b"short", "cab1", "mute", {"duration_s": 5}))
        (reply,) = dev.replies(1)
    finally:
        dev.close()
    assert reply["ok"] is False and "at least 16" in reply["error"]


def test_level_3_sounds_while_muted_and_mutes_per_hour_are_bounded() -> None:
    buzzer = Buzzer(BuzzerSettings(max_mute_s=600, max_mute_per_hour_s=900), NullLine(),
                    register_atexit=False)
    buzzer.mute(600, now_s=0.0)
    buzzer.alert(2, now_s=10.0)
    assert not buzzer.update(10.0)  # level 2 is muted
    buzzer.alert(3, now_s=20.0)
    assert buzzer.update(20.0)  # level 3 never is (before: silent)
    # re-sending mute every 600 s kept the buzzer silent for ever; now at most 900 s an hour
    assert buzzer.mute(300, now_s=600.0)["mute_budget_left_s"] == 0
    with pytest.raises(ValueError, match="mute budget"):
        buzzer.mute(60, now_s=900.0)
    assert buzzer.mute_budget_left_s(3600.0 + 600.0) == 600  # the first mute left the window
    buzzer.mute(600, now_s=3600.0 + 600.0)
    with pytest.raises(SettingsError, match="max_mute_per_hour_s"):
        load_settings(BuzzerSettings, {"max_mute_per_hour_s": float("nan")}, "buzzer")
    with pytest.raises(SettingsError, match="command_window_s"):
        load_settings(MqttSettings, {"command_window_s": 0}, "mqtt")


def test_the_documented_shell_example_signs_a_command_the_device_accepts(
        broker: Broker, tmp_path: Path) -> None:
    for tool in ("openssl", "jq", "mosquitto_pub", "mosquitto_sub"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}")
    doc = (ROOT / "docs" / "mqtt.md").read_text()
    script = doc.split("<!-- sign-begin -->")[1].split("<!-- sign-end -->")[0]
    script = script.strip().removeprefix("```sh").removesuffix("```")
    script = script.replace("dev=cab-7", "dev=cab1").replace(
        "-h broker", f"-h 127.0.0.1 -p {broker.port}")
    dev = Device(broker.port, tmp_path / "s", environ={"DMS_COMMAND_KEY": KEY})
    try:
        done = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                              env={**os.environ, "DMS_COMMAND_KEY": KEY}, timeout=60)
        (reply,) = dev.replies(1)
    finally:
        dev.close()
    assert done.returncode == 0, done.stderr
    assert reply["ok"] is True and reply["request_id"] == "a1", reply
    assert json.loads(done.stdout)["ok"] is True  # what mosquitto_sub printed
    assert dev.buzzer.muted()


def test_a_command_flood_is_counted_not_answered_and_a_signed_command_gets_through(
        broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """issue 21, fault 5: 1,000 unsigned messages a second gave 15k WARNING lines and 15k
    replies, and a signed `state` took 9.1 s instead of 0.65 s. Now what is not a signed
    envelope gets no reply, refusals are logged as a count, and the signed command is
    answered."""
    import paho.mqtt.client as mqtt

    dev = Device(broker.port, tmp_path / "s", environ={"DMS_COMMAND_KEY": KEY})
    flood = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="flood")
    flood.connect("127.0.0.1", broker.port)
    flood.loop_start()
    try:
        with caplog.at_level(logging.INFO, logger="dms.outputs"):
            for i in range(2000):
                body = b"not json" if i % 3 else b'{"duration_s": 600}'
                flood.publish("dms/cab1/cmd/mute", body, qos=0)
            flood.publish("dms/cab1/cmd/state", sign_command(KEY.encode(), "cab1", "state",
                                                             request_id="through"), qos=1)
            assert dev.sub.wait_for(lambda m: any(
                t.endswith("/reply") and b'"through"' in p for t, p in m), 60)
            time.sleep(1.0)  # anything else that would be answered arrives meanwhile
            refused = dev.comm.stats()["commands_rejected"]
    finally:
        flood.loop_stop()
        flood.disconnect()
        dev.close()
    replies = dev.sub.payloads("/reply")
    assert [(r["request_id"], r["ok"]) for r in replies] == [("through", True)]
    assert refused >= 1000  # counted (QoS 0: the broker may drop some of the flood)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert 1 <= len(warnings) <= 5, [r.getMessage() for r in warnings]


def test_dms_command_shows_the_refusal_of_a_device_with_commands_off(
        broker: Broker, tmp_path: Path) -> None:
    """issue 22: against a device without a command key, `dms command` said "no reply within
    10 s": the refusal carried "request_id": null. Now it carries the request's id."""
    dev = Device(broker.port, tmp_path / "s", environ={})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPS_KEY": KEY}
    try:
        done = subprocess.run([sys.executable, "-m", "dms", "command", "--mqtt",
                               f"127.0.0.1:{broker.port}", "--device", "cab1", "--key-env",
                               "OPS_KEY", "--timeout-s", "20", "mute", "30"],
                              capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    finally:
        dev.close()
    assert done.returncode == 1
    assert "no reply" not in done.stderr
    assert "mute refused" in done.stderr and "DMS_COMMAND_KEY is not set" in done.stderr
    assert json.loads(done.stdout)["request_id"]


@pytest.mark.parametrize("tamper", ["non-hex sig", "non-ascii sig", "401-digit ts"])
def test_a_malformed_sig_or_ts_is_a_refusal_not_a_traceback(tamper: str) -> None:
    """issue 21, fault 6: a non-hex `sig` or a 401-digit `ts` raised a traceback."""
    key = KEY.encode()
    v = CommandVerifier(key, "cab1", 30.0)
    if tamper == "401-digit ts":
        body = json.dumps({"device": "cab1", "command": "state", "ts": 10 ** 400,
                           "nonce": "n" * 16})
        text = json.dumps({"body": body, "sig": signature(key, body.encode())})
    else:
        body = json.loads(sign_command(key, "cab1", "state"))["body"]
        sig = "zz" * 32 if tamper == "non-hex sig" else "\u00e9" * 64
        text = json.dumps({"body": body, "sig": sig})
    with pytest.raises(CommandRejected):
        v.verify("state", text)
