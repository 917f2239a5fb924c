"""TLS with username/password from the environment, against a real mosquitto TLS listener
with a certificate authority made by the test (openssl)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from dms.outputs.mqtt import MqttCommunicator, MqttSettings
from dms.settings import load_settings

from broker import Broker, Collector, free_port, require_mosquitto

pytestmark = pytest.mark.broker


def _pki(d: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it."""
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl to make test certificates")
    ca_key, ca, key, csr, crt = (d / n for n in ("ca.key", "ca.crt", "srv.key", "srv.csr",
                                                   "srv.crt"))
    ext = d / "san.ext"
    ext.write_text("subjectAltName = IP:127.0.0.1\n")
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-keyout", str(ca_key), "-out", str(ca), "-subj", "/CN=dms test CA")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
        str(csr), "-subj", "/CN=127.0.0.1")
    run("openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-days", "2", "-out", str(crt), "-extfile", str(ext))
    return ca, crt, key


def test_alert_over_tls_with_password_from_environment(tmp_path):
    binary = require_mosquitto()
    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("needs mosquitto_passwd (Debian package mosquitto)")
    ca, crt, key = _pki(tmp_path)
    pw = tmp_path / "passwd"
    pw.touch()
    for user, secret in (("cab1", "s3cret"), ("fleet", "fleet-pw")):
        subprocess.run(["mosquitto_passwd", "-b", str(pw), user, secret], check=True)
    tls_port = free_port()
    extra = (f"password_file {pw}\n"
             f"listener {tls_port} 127.0.0.1\ncafile {ca}\ncertfile {crt}\nkeyfile {key}\n")
    with Broker(tmp_path / "broker", binary=binary, allow_anonymous=False,
                extra_config=extra) as b:
        sub = Collector(b.port, "dms/cab1/alert", user="fleet")  # plain listener, password
        settings = load_settings(MqttSettings, {
            "host": "127.0.0.1", "port": tls_port, "device_id": "cab1", "tls": True,
            "tls_ca_file": str(ca), "username": "cab1", "password_env": "CAB_PW",
            "reconnect_min_s": 1, "reconnect_max_s": 1}, "mqtt")
        comm = MqttCommunicator(settings, tmp_path / "state", environ={"CAB_PW": "s3cret"})
        comm.start()
        try:
            assert comm.wait_connected(10), "no TLS connection"
            comm.publish_alert({"type": "distraction", "event_id": "tls-1"})
            assert comm.wait_drained(10)
            assert sub.wait_for(lambda m: len(m) >= 1, 10)
            assert sub.payloads("/alert")[0]["event"]["event_id"] == "tls-1"
        finally:
            comm.stop()
            sub.close()
        # a wrong password is refused: nothing connects, and the alert stays in the outbox
        bad = MqttCommunicator(settings, tmp_path / "state2", environ={"CAB_PW": "wrong"})
        bad.start()
        try:
            assert not bad.wait_connected(3)
            bad.publish_alert({"type": "distraction", "event_id": "tls-2"})
            assert not bad.wait_drained(1)
        finally:
            bad.stop()
