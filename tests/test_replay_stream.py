"""``dms replay --poses`` streams its input, accepts a BOM, and prints strict JSON (issue 13,
items 11-13)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from dms.engine.settings import EngineSettings
from dms.json_safe import json_line
from dms.sim.scenarios import ScenarioBuilder, csv_text

S = EngineSettings()


def long_glance_csv() -> str:
    sc = ScenarioBuilder(S, rate_hz=20).road(10).glance("infotainment", 5.0).road(5).build()
    return csv_text(sc.observations)


def test_the_first_event_is_printed_before_the_file_ends(tmp_path: Path) -> None:
    """Through a FIFO: the writer holds the rest of the file back until the first event has
    been printed. A replay that loaded the whole file first would never print it."""
    lines = long_glance_csv().splitlines(keepends=True)
    fifo = tmp_path / "poses.csv"
    os.mkfifo(fifo)
    proc = subprocess.Popen([sys.executable, "-m", "dms", "replay", "--poses", str(fifo)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first_event = threading.Event()
    got: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            got.append(line)
            first_event.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    with open(fifo, "w") as w:
        w.writelines(lines)  # the whole drive up to here: the glance alerts and clears
        w.flush()
        assert first_event.wait(120), proc.stderr.read() if proc.poll() is not None else ""
        w.write(lines[-1].replace(lines[-1].split(",")[0], "999.0"))  # the file goes on
    assert proc.wait(timeout=60) == 0
    reader.join(timeout=10)
    assert json.loads(got[0])["type"] == "distraction"


def test_a_bom_header_is_accepted(tmp_path: Path) -> None:
    csv = tmp_path / "excel.csv"
    csv.write_text("\ufeff" + long_glance_csv(), encoding="utf-8")
    p = subprocess.run([sys.executable, "-m", "dms", "replay", "--poses", str(csv)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert [json.loads(line)["phase"] for line in p.stdout.splitlines()] == ["raised",
                                                                              "cleared"]


def test_printed_records_are_strict_json() -> None:
    line = json_line({"t_s": float("nan"), "pose": {"yaw_deg": float("inf"), "zone": None},
                      "levels": [1.0, float("-inf")]})
    assert "NaN" not in line and "Infinity" not in line
    assert json.loads(line) == {"t_s": None, "pose": {"yaw_deg": None, "zone": None},
                                "levels": [1.0, None]}
