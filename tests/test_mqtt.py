"""The MQTT communicator against a real mosquitto broker on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dms.commands import CommandRejected, MuteCommand, parse_command
from dms.errors import DmsError
from dms.outputs.buzzer import Buzzer, BuzzerSettings, NullLine
from dms.outputs.command_auth import sign_command
from dms.outputs.mqtt import MqttCommunicator, MqttSettings
from dms.settings import SettingsError, load_settings

from broker import Broker, Collector, free_port, require_mosquitto, start_broker

pytestmark = pytest.mark.broker
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with start_broker(tmp_path / "broker") as b:
        yield b


def settings(port: int, **kw: Any) -> MqttSettings:
    base = {"host": "127.0.0.1", "port": port, "device_id": "cab1", "reconnect_min_s": 1,
            "reconnect_max_s": 1, "keepalive_s": 5}
    base.update(kw)
    return load_settings(MqttSettings, base, "mqtt")


KEY = b"test-command-key-0123456789"


def signed(name: str, request_id: Any = None, **args: Any) -> bytes:
    """A command signed with KEY for device cab1 (what `dms command` sends)."""
    return sign_command(KEY, "cab1", name, args, request_id=request_id)


def seqs(collector: Collector) -> list[int]:
    return [p["seq"] for p in collector.payloads("/alert")]


def test_alert_state_and_status_reach_a_subscriber(broker: Broker, tmp_path: Path) -> None:
    sub = Collector(broker.port, "dms/cab1/#")
    try:
        comm = MqttCommunicator(settings(broker.port), tmp_path / "state").start()
        assert comm.wait_connected(10)
        seq = comm.publish_alert({"kind": "distracted", "level": 2, "yaw_deg": float("nan")})
        comm.publish_state({"driver_state": "attentive", "calibrated": False, "fps": 29.5})
        assert comm.wait_drained(10)
        assert sub.wait_for(lambda m: any(t.endswith("/state") for t, _ in m))
        comm.stop()
        assert sub.wait_for(lambda m: m[-1] == ("dms/cab1/status", b"offline"))
    finally:
        sub.close()
    (alert,) = sub.payloads("/alert")
    assert alert["schema"] == 1 and alert["seq"] == seq == 1 and alert["device"] == "cab1"
    assert alert["event"] == {"kind": "distracted", "level": 2, "yaw_deg": None}  # NaN -> null
    assert len(alert["stream"]) == 32
    assert sub.payloads("/status")[0] == "online"
    assert sub.payloads("/state")[0]["state"]["driver_state"] == "attentive"


def test_last_will_says_offline_when_the_publisher_is_killed(broker: Broker,
                                                            tmp_path: Path) -> None:
    script = (
        "import sys, time\n"
        "from dms.outputs.mqtt import MqttCommunicator, MqttSettings\n"
        "c = MqttCommunicator(MqttSettings(host='127.0.0.1', port=int(sys.argv[1]),"
        " device_id='victim', keepalive_s=5), sys.argv[2]).start()\n"
        "assert c.wait_connected(10)\n"
        "print('connected', flush=True)\n"
        "time.sleep(60)\n")
    sub = Collector(broker.port, "dms/victim/status")
    proc = subprocess.Popen([sys.executable, "-c", script, str(broker.port), str(tmp_path / "s")],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "connected"
        assert sub.wait_for(lambda m: (m[-1:] == [("dms/victim/status", b"online")]))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert sub.wait_for(lambda m: m[-1] == ("dms/victim/status", b"offline"), 15)
    finally:
        if proc.poll() is None:
            proc.kill()
        sub.close()
    # retained: a newcomer learns the device is offline
    late = Collector(broker.port, "dms/victim/status")
    try:
        assert late.wait_for(lambda m: m == [("dms/victim/status", b"offline")])
    finally:
        late.close()


@pytest.mark.slow
def test_broker_outage_mid_stream_loses_nothing_and_keeps_order(tmp_path: Path) -> None:
    with start_broker(tmp_path / "broker") as brk:
        # a fleet-style subscriber: persistent session, so the broker queues for it across
        # its own restart (persistence is on in the test broker)
        sub = Collector(brk.port, "dms/cab1/alert", client_id="fleet-sub", persistent=True)
        comm = MqttCommunicator(settings(brk.port), tmp_path / "state").start()
        try:
            assert comm.wait_connected(10)
            assert sub.wait_for(lambda m: True)
            sent = [comm.publish_alert({"i": i}) for i in range(40)]
            brk.stop()  # the broker goes away mid-stream...
            t_down = time.monotonic()
            sent += [comm.publish_alert({"i": i}) for i in range(40, 80)]
            while comm.connected and time.monotonic() - t_down < 5:
                time.sleep(0.05)
            assert not comm.connected
            assert comm.stats()["outbox"]["pending_alerts"] >= 40  # ...queued on disk
            time.sleep(2.0)  # long enough for several failed reconnect attempts
            brk.start()
            sent += [comm.publish_alert({"i": i}) for i in range(80, 100)]
            assert comm.wait_drained(20), comm.stats()
            assert sub.wait_for(lambda m: len({json.loads(p)["seq"] for _, p in m}) >= 100, 20)
        finally:
            comm.stop()
            sub.close()
    got = seqs(sub)
    assert sent == list(range(1, 101))
    assert set(got) == set(sent)  # nothing lost
    first_seen = list(dict.fromkeys(got))
    assert first_seen == sorted(first_seen)  # in order (re-sends may repeat, never reorder)


def test_alerts_left_in_the_outbox_are_delivered_by_the_next_process(tmp_path: Path) -> None:
    require_mosquitto()
    port = free_port()
    state = tmp_path / "state"
    first = MqttCommunicator(settings(port), state).start()  # no broker on that port yet
    assert [first.publish_alert({"i": i}) for i in range(5)] == [1, 2, 3, 4, 5]
    assert not first.wait_drained(0.5)
    first.stop()  # crash-like: nothing delivered, 5 rows left

    with Broker(tmp_path / "broker", port=port) as brk:
        sub = Collector(brk.port, "dms/cab1/alert")
        second = MqttCommunicator(settings(port), state).start()
        try:
            assert second.wait_drained(15)
            assert second.publish_alert({"i": 5}) == 6  # seq survived the restart
            assert second.wait_drained(10)
            assert sub.wait_for(lambda m: len(m) >= 6)
        finally:
            second.stop()
            sub.close()
    assert seqs(sub) == [1, 2, 3, 4, 5, 6]
    assert [p["event"]["i"] for p in sub.payloads("/alert")] == [0, 1, 2, 3, 4, 5]


def test_commands_are_dispatched_and_bad_ones_get_a_reply(broker: Broker,
                                                          tmp_path: Path) -> None:
    buzzer = Buzzer(BuzzerSettings(max_mute_s=60), NullLine(), register_atexit=False)
    calls: list[Any] = []

    def boom(_cmd: Any) -> None:
        raise RuntimeError("handler bug")

    comm = MqttCommunicator(settings(broker.port), tmp_path / "state",
                            environ={"DMS_COMMAND_KEY": KEY.decode()}).start()
    comm.set_command_handlers({
        "mute": lambda cmd: buzzer.mute(cmd.duration_s),
        "calibrate": lambda cmd: calls.append(cmd) or {"started": True},
    })
    sub = Collector(broker.port, "dms/cab1/#")
    try:
        assert comm.wait_connected(10)
        comm.publish_state({"driver_state": "unknown"})
        # both subscriptions must be live before the batch: a command the broker receives
        # before the device's cmd/# SUBACK is dropped (MQTT), so probe until one is answered
        deadline = time.monotonic() + 20
        while not any(t.endswith("/reply") for t, _ in sub.messages):
            assert time.monotonic() < deadline, "no reply to the probe command"
            sub.client.publish("dms/cab1/cmd/state", signed("state", request_id="probe"), qos=1)
            sub.wait_for(lambda m: any(t.endswith("/reply") for t, _ in m), 1.0)
        time.sleep(0.5)  # let any second probe's reply arrive before counting
        sub.clear()
        sends = [("mute", signed("mute", duration_s=30, request_id="r1")),
                 ("mute", signed("mute", duration_s=600)),  # beyond the buzzer's bound
                 ("mute", b"not json"),  # not a signed envelope: counted, not answered
                 ("mute", signed("mute", duration=5)),
                 ("selfdestruct", signed("selfdestruct")),
                 ("calibrate", signed("calibrate")),
                 ("state", signed("state", request_id=7)),
                 ("mute", b"\xff\xfe")]  # neither
        for name, body in sends:
            sub.client.publish(f"dms/cab1/cmd/{name}", body, qos=1)
        assert sub.wait_for(lambda m: len([t for t, _ in m if t.endswith("/reply")]) == 6)
        comm.set_command_handler("calibrate", boom)
        sub.client.publish("dms/cab1/cmd/calibrate", signed("calibrate"), qos=1)
        assert sub.wait_for(lambda m: len([t for t, _ in m if t.endswith("/reply")]) == 7)
        assert comm.publish_alert({"still": "alive"}) == 1  # nothing crashed
        assert comm.wait_drained(10)
    finally:
        comm.stop()
        sub.close()
    replies = sub.payloads("/reply")
    by_cmd = [(r["command"], r["ok"]) for r in replies]
    assert by_cmd == [("mute", True), ("mute", False), ("mute", False),
                      ("selfdestruct", False), ("calibrate", True), ("state", True),
                      ("calibrate", False)]
    assert replies[0]["request_id"] == "r1" and replies[0]["result"]["muted_s"] == 30.0
    assert "600" in replies[1]["error"]
    assert "unknown argument 'duration'" in replies[2]["error"]
    assert "unknown command 'selfdestruct'" in replies[3]["error"]
    assert replies[5]["request_id"] == "7" and replies[5]["result"] == {"published": True}
    assert "internal error" in replies[6]["error"]
    assert comm.stats()["commands_rejected"] >= 2 + 4  # the two bare payloads are counted
    assert len(sub.payloads("/state")) >= 1  # the state request re-published it
    assert buzzer.muted() and calls == [calls[0]]


def test_parse_command_validates_types() -> None:
    assert parse_command("mute", b"12.5") == MuteCommand(12.5)
    for bad in (b"true", b'"5"', b"[1]", b'{"duration_s": null}'):
        with pytest.raises(CommandRejected):
            parse_command("mute", bad)
    # its range is the buzzer's (max_mute_s), checked and worded in one place
    assert parse_command("mute", b"-1") == MuteCommand(-1.0)
    with pytest.raises(CommandRejected, match="exceeds"):
        parse_command("state", b" " * 5000)


def test_telemetry_is_rate_limited(broker: Broker, tmp_path: Path) -> None:
    sub = Collector(broker.port, "dms/cab1/telemetry")
    comm = MqttCommunicator(settings(broker.port, telemetry_interval_s=1.0),
                            tmp_path / "state").start()
    try:
        assert comm.wait_connected(10)
        times = [100.0, 100.25, 100.5, 100.75, 101.0, 101.5, 102.0, 102.9]
        sent = [comm.publish_telemetry({"yaw_deg": t}, t) for t in times]
        assert sent == [True, False, False, False, True, False, True, False]
        assert sub.wait_for(lambda m: len(m) == 3)
    finally:
        comm.stop()
        sub.close()
    assert [p["t_s"] for p in sub.payloads("/telemetry")] == [100.0, 101.0, 102.0]


def test_password_comes_from_the_named_environment_variable(tmp_path: Path) -> None:
    binary = require_mosquitto()
    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("needs mosquitto_passwd (Debian package mosquitto)")
    pw_file = tmp_path / "passwd"
    pw_file.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(pw_file), "cab1", "s3cret"], check=True)
    pw_file.chmod(0o600)
    with Broker(tmp_path / "broker", binary=binary, allow_anonymous=False,
                extra_config=f"password_file {pw_file}\n") as brk:
        cfg = settings(brk.port, username="cab1", password_env="CAB_PW")
        good = MqttCommunicator(cfg, tmp_path / "s1", environ={"CAB_PW": "s3cret"}).start()
        bad = MqttCommunicator(cfg, tmp_path / "s2", environ={"CAB_PW": "wrong"}).start()
        try:
            assert good.wait_connected(10)
            assert not bad.wait_connected(2)
        finally:
            good.stop()
            bad.stop()


def test_home_assistant_discovery_is_retained_when_enabled(broker: Broker,
                                                          tmp_path: Path) -> None:
    comm = MqttCommunicator(settings(broker.port, ha_discovery=True), tmp_path / "s").start()
    try:
        assert comm.wait_connected(10)
    finally:
        comm.stop()
    sub = Collector(broker.port, "homeassistant/#")  # arrives later: retained
    try:
        assert sub.wait_for(lambda m: len(m) == 3)
    finally:
        sub.close()
    topics = sorted(t for t, _ in sub.messages)
    assert "homeassistant/sensor/dms_cab1/driver_state/config" in topics
    configs = [json.loads(p) for _, p in sub.messages]
    assert all(c["availability_topic"] == "dms/cab1/status" for c in configs)


def test_outbox_over_bound_is_reported_and_nothing_dropped(tmp_path: Path) -> None:
    reports: list[Any] = []
    comm = MqttCommunicator(settings(free_port(), outbox_max_messages=2), tmp_path / "s",
                            on_outbox_over_bound=reports.append).start()
    try:
        for i in range(4):
            comm.publish_alert({"i": i})
        assert comm.stats()["outbox"]["pending_alerts"] == 4
    finally:
        comm.stop()
    assert [r.alerts_over_bound for r in reports] == [1, 2]


def test_settings_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="mqtt.hots"):
        load_settings(MqttSettings, {"hots": "x"}, "mqtt")
    with pytest.raises(SettingsError, match="tls_cert_file"):
        load_settings(MqttSettings, {"tls_cert_file": "a.pem"}, "mqtt")
    with pytest.raises(DmsError, match="wildcard"):
        MqttCommunicator(MqttSettings(prefix="dms/#"), tmp_path)
    cfg = MqttSettings(tls=True, tls_ca_file=str(tmp_path / "missing-ca.pem"))
    with pytest.raises(DmsError, match="missing-ca.pem"):
        MqttCommunicator(cfg, tmp_path).start()


def test_dms_listen_prints_and_writes_jsonl(broker: Broker, tmp_path: Path) -> None:
    out = tmp_path / "alerts.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dms", "listen", "--mqtt", f"127.0.0.1:{broker.port}",
         "--device", "cab1", "--count", "2", "--timeout-s", "20", "--jsonl", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    comm = MqttCommunicator(settings(broker.port), tmp_path / "s").start()
    try:
        assert comm.wait_connected(10)
        # the listener subscribes asynchronously: keep sending until it has two
        for i in range(200):
            comm.publish_alert({"i": i})
            comm.wait_drained(5)
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        stdout, stderr = proc.communicate(timeout=20)
    finally:
        comm.stop()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    lines = [json.loads(x) for x in stdout.splitlines()]
    assert len(lines) == 2 and lines[1]["seq"] == lines[0]["seq"] + 1
    assert [json.loads(x) for x in out.read_text().splitlines()] == lines


def test_dms_listen_times_out_with_status_1(broker: Broker) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dms", "listen", "--mqtt", f"127.0.0.1:{broker.port}",
         "--count", "1", "--timeout-s", "0.5"], capture_output=True, text=True, cwd=ROOT,
        timeout=30)
    assert done.returncode == 1 and "0 of 1" in done.stderr


def test_documented_acl_lets_only_the_fleet_send_commands(tmp_path: Path) -> None:
    binary = require_mosquitto()
    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("needs mosquitto_passwd (Debian package mosquitto)")
    doc = (ROOT / "docs" / "mqtt.md").read_text()
    acl_text = doc.split("<!-- acl-begin -->")[1].split("<!-- acl-end -->")[0]
    acl_text = acl_text.strip().removeprefix("```").removesuffix("```")
    acl, pw_file = tmp_path / "acl", tmp_path / "passwd"
    acl.write_text(acl_text)
    pw_file.write_text("")
    for user in ("cab1", "fleet", "dashboard"):
        subprocess.run(["mosquitto_passwd", "-b", str(pw_file), user, f"{user}-pw"], check=True)
    pw_file.chmod(0o600)
    with Broker(tmp_path / "broker", binary=binary, allow_anonymous=False,
                extra_config=f"password_file {pw_file}\nacl_file {acl}\n") as brk:
        fleet = Collector(brk.port, "dms/#", user="fleet")
        dash = Collector(brk.port, "dms/+/alert", user="dashboard")
        comm = MqttCommunicator(settings(brk.port, username="cab1"), tmp_path / "s",
                                environ={"DMS_MQTT_PASSWORD": "cab1-pw",
                                         "DMS_COMMAND_KEY": KEY.decode()}).start()
        comm.set_command_handler("mute", lambda cmd: {"muted_s": cmd.duration_s})
        try:
            assert comm.wait_connected(10)
            comm.publish_alert({"kind": "acl"})
            assert comm.wait_drained(10) and comm.stats()["alerts_rejected"] == 0
            assert dash.wait_for(lambda m: len(m) == 1)  # dashboards read alerts
            # a dashboard's command is refused by the broker (the PUBACK comes after the ACL
            # check), then the fleet's goes through; replies arrive in that order if at all
            dash.client.publish("dms/cab1/cmd/mute", signed("mute", duration_s=5,
                                                            request_id="dash"),
                                qos=1).wait_for_publish(5)
            fleet.client.publish("dms/cab1/cmd/mute", signed("mute", duration_s=5,
                                                             request_id="ok"), qos=1)
            assert fleet.wait_for(lambda m: any(t.endswith("/reply") for t, _ in m))
        finally:
            comm.stop()
            fleet.close()
            dash.close()
    assert [r["request_id"] for r in fleet.payloads("/reply")] == ["ok"]
    assert fleet.payloads("/alert")[0]["event"] == {"kind": "acl"}
