"""The durable outbox: order, persistence of rows and sequence numbers, the bound policy."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from dms.errors import DmsError
from dms.outputs.outbox import Kind, Outbox


def payload(stream: str, seq: int) -> bytes:
    return f'{{"seq":{seq}}}'.encode()


def test_rows_come_back_in_order_and_survive_reopening(tmp_path: Path) -> None:
    db = tmp_path / "state" / "outbox.sqlite3"
    box = Outbox(db)
    seqs = [box.put_alert("dms/a/alert", payload).row.seq for _ in range(3)]
    assert seqs == [1, 2, 3]
    box.put_telemetry("dms/a/telemetry", b"{}")
    stream = box.stream_id
    box.close()

    box = Outbox(db)  # a new process using the same state directory
    rows = box.pending()
    assert [r.kind for r in rows] == [Kind.ALERT] * 3 + [Kind.TELEMETRY]
    assert [r.payload for r in rows[:3]] == [payload(stream, s) for s in (1, 2, 3)]
    assert box.stream_id == stream
    box.delete(rows[0].id)
    box.delete(rows[0].id)  # deleting twice is harmless (a duplicate PUBACK)
    assert [r.seq for r in box.pending(after_id=rows[0].id)] == [2, 3, None]
    assert box.put_alert("dms/a/alert", payload).row.seq == 4  # seq continues across restarts
    box.close()


def test_sequence_numbers_are_unique_under_concurrent_writers(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    got: list[int] = []
    lock = threading.Lock()

    def writer() -> None:
        for _ in range(25):
            seq = box.put_alert("t", payload).row.seq
            with lock:
                got.append(seq)

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(1, 101))
    assert [r.seq for r in box.pending(limit=1000)] == list(range(1, 101))


def test_full_outbox_refuses_telemetry_then_evicts_it_for_alerts(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_messages=4, max_telemetry=3)
    assert all(box.put_telemetry("tel", b"%d" % i) for i in range(3))
    assert box.put_telemetry("tel", b"x") is None  # telemetry share is full
    assert box.put_alert("al", payload).evicted_telemetry == 0  # 4 rows now
    assert box.put_telemetry("tel", b"y") is None  # outbox is full
    r = box.put_alert("al", payload)  # needs room: the oldest telemetry goes
    assert r.evicted_telemetry == 1 and not r.over_bound
    assert [row.payload for row in box.pending() if row.kind is Kind.TELEMETRY] == [b"1", b"2"]
    stats = box.stats()
    assert (stats.telemetry_refused, stats.telemetry_evicted) == (2, 1)


def test_alerts_alone_beyond_the_bound_are_kept_and_reported(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_messages=3, max_telemetry=0)
    results = [box.put_alert("al", payload) for _ in range(5)]
    assert [r.over_bound for r in results] == [False, False, False, True, True]
    assert [r.seq for r in box.pending()] == [1, 2, 3, 4, 5]  # none dropped
    assert box.stats().alerts_over_bound == 2
    assert box.stats().pending_alerts == 5


def test_a_failed_payload_build_stores_nothing_and_keeps_the_counter(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")

    def broken(stream: str, seq: int) -> bytes:
        raise ValueError("cannot serialise")

    with pytest.raises(ValueError):
        box.put_alert("al", broken)
    assert len(box) == 0
    assert box.put_alert("al", payload).row.seq == 1


def test_unusable_path_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(DmsError, match="dir.db"):
        Outbox(tmp_path / "dir.db")


def test_outbox_files_are_0640_and_the_directory_0750_whatever_the_umask(
        tmp_path: Path) -> None:
    import os
    import stat

    state = tmp_path / "state"
    state.mkdir(mode=0o755)  # as an existing state directory outside systemd
    old = os.umask(0o022)
    try:
        box = Outbox(state / "outbox.sqlite3")
        box.put_alert("al", payload)
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in state.iterdir()}
        box.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(state.stat().st_mode) == 0o750  # before: 0755
    assert modes == {"outbox.sqlite3": 0o640, "outbox.sqlite3-wal": 0o640}  # before: 0644
