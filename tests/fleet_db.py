"""Databases and processes for the fleet tests (issue 24).

PostgreSQL: ``$DMS_TEST_POSTGRES_URL`` when set (``.ci/run`` starts a throwaway cluster from
Debian's package and exports it); otherwise the session starts its own throwaway cluster with
``scripts/pg_throwaway`` when Debian's server binaries are installed, and the PostgreSQL tests
skip with the reason when neither is there. Every test gets a database of its own.

``IngestProcess`` runs ``dms fleet ingest`` as a real process (killed with SIGKILL where a test
says so), its log read by a thread.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PG_THROWAWAY = ROOT / "scripts" / "pg_throwaway"
BROKER_CONFIG = "max_queued_messages 0\n"  # a fleet broker queues without bound for sessions


def pg_binaries() -> bool:
    return bool(glob.glob("/usr/lib/postgresql/*/bin/initdb"))


class PgCluster:
    """A throwaway cluster in ``directory`` (scripts/pg_throwaway)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.url = ""

    def start(self) -> PgCluster:
        p = subprocess.run([str(PG_THROWAWAY), "start", str(self.directory)],
                           capture_output=True, text=True, timeout=120)
        if p.returncode != 0:
            raise RuntimeError(f"pg_throwaway start failed: {p.stderr.strip()}")
        self.url = p.stdout.strip().splitlines()[-1]
        return self

    def stop(self) -> None:
        subprocess.run([str(PG_THROWAWAY), "stop", str(self.directory)], capture_output=True,
                       timeout=120, check=False)

    def restart(self) -> None:
        """Start the stopped server again, on the same port."""
        p = subprocess.run([str(PG_THROWAWAY), "restart", str(self.directory)],
                           capture_output=True, text=True, timeout=120)
        if p.returncode != 0:
            raise RuntimeError(f"pg_throwaway restart failed: {p.stderr.strip()}")


def new_cluster() -> PgCluster:
    """A started cluster in a fresh folder under /tmp (the postgres user must reach it)."""
    if not pg_binaries():
        pytest.skip("needs PostgreSQL's server binaries (Debian: apt install postgresql; "
                    "scripts/bootstrap --dev installs them)")
    return PgCluster(Path(tempfile.mkdtemp(prefix="dms-pg-", dir="/tmp"))).start()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """The URL of a PostgreSQL server the tests may create databases on."""
    url = os.environ.get("DMS_TEST_POSTGRES_URL", "")
    if url:
        yield url
        return
    if not pg_binaries():
        pytest.skip("needs PostgreSQL: set DMS_TEST_POSTGRES_URL, or install Debian's "
                    "postgresql package (scripts/bootstrap --dev) for a throwaway cluster")
    cluster = new_cluster()
    try:
        yield cluster.url
    finally:
        cluster.stop()
        shutil.rmtree(cluster.directory, ignore_errors=True)


def create_database(server_url: str) -> str:
    """A new, empty database on the server; its URL."""
    import psycopg

    name = f"dms_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    base, _, _ = server_url.rpartition("/")
    return f"{base}/{name}"


def drop_database(server_url: str, url: str) -> None:
    import psycopg

    name = url.rpartition("/")[2]
    try:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    except psycopg.Error:
        pass  # the server went away with the test


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    url = create_database(pg_server)
    yield url
    drop_database(pg_server, url)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The same test on a SQLite file and on a PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fleet.sqlite3'}"
        return
    server = request.getfixturevalue("pg_server")
    url = create_database(server)
    yield url
    drop_database(server, url)


class IngestProcess:
    """``dms -v fleet ingest`` in its own process; ``log`` collects its stderr."""

    def __init__(self, port: int, db: str, *extra: str, client_id: str = "fleet-test",
                 preexec: Any = None) -> None:
        self.cmd = [sys.executable, "-m", "dms", "-v", "fleet", "ingest",
                    "--mqtt", f"127.0.0.1:{port}", "--db", db, "--client-id", client_id,
                    "--report-interval-s", "1", *extra]
        self.preexec = preexec
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self.stdout = ""
        self._reader: threading.Thread | None = None

    def start(self, wait_subscribed: int = 1) -> IngestProcess:
        """Start; wait until ``wait_subscribed`` more workers have subscribed (a liveness
        bound, generous: under a load of 20+ on 2 cores, start-up alone took over a minute)."""
        before = self.count("subscribed to")
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, cwd=ROOT, preexec_fn=self.preexec)
        self._reader = threading.Thread(target=self._read, args=(self.proc,), daemon=True)
        self._reader.start()
        if wait_subscribed:
            assert self.wait_log("subscribed to", 240, count=before + wait_subscribed), \
                self.text()
        return self

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self.lines.append(line)

    def text(self) -> str:
        return "".join(self.lines)

    def count(self, needle: str) -> int:
        return sum(needle in line for line in list(self.lines))

    def wait_log(self, needle: str, timeout_s: float = 30.0, count: int = 1) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.count(needle) < count:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL: no commit finishes, no acknowledgement is sent, no goodbye."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        if self._reader is not None:
            self._reader.join(timeout=5)

    def stop(self) -> int:
        """SIGTERM and wait; the exit code (the final stats line is in ``stdout``)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self._reader is not None:  # the log to its end (read by the thread, not here)
            self._reader.join(timeout=10)
        assert self.proc.stdout is not None
        self.stdout += self.proc.stdout.read()  # one line per worker: small, no deadlock
        return int(self.proc.returncode)

    def final_stats(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.startswith("{")]


def fleet_report(db: str, *extra: str) -> dict[str, Any]:
    """``dms fleet report --json`` (a real process)."""
    p = subprocess.run([sys.executable, "-m", "dms", "fleet", "report", "--db", db, "--json",
                        *extra], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    return dict(json.loads(p.stdout))


def stored_count(db: str) -> int:
    """Alerts in the store right now (0 before it exists)."""
    import sqlalchemy as sa

    from dms.fleet.store import Store

    store = Store(db, readonly=True)
    try:
        with store.connect() as conn:
            if not sa.inspect(conn).has_table("alerts"):
                return 0
            return int(conn.execute(sa.text("SELECT COUNT(*) FROM alerts")).scalar() or 0)
    except Exception:
        return 0
    finally:
        store.close()
