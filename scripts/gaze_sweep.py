#!/usr/bin/env python3
"""Gaze sweep on renders: how the eye measurement reads eyes-only looks of known angles.

Renders (once, cached) a drive whose head stays at the road while the eyes look at
+-10/20/30 deg of yaw and +-10/20 deg of pitch (``look YAW,PITCH 2s`` steps of the scenario
language), runs the whole per-frame step (``DriverMonitor``: FaceMesh, the iris model, the
engine) on it, and prints, per target, the median eye-in-head gaze it measured on the steady
frames of the hold, raw and relative to the straight-ahead reading (the engine uses the
offset from the driver's own straight ahead). This is how ``[vision.eyes] gaze_yaw_gain``
was chosen (docs/benchmarks.md, section 8)::

    .venv/bin/python scripts/gaze_sweep.py [--photo astronaut|grace_hopper] [--ir] [--json]
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

TARGETS = [(10, 0), (20, 0), (30, 0), (-10, 0), (-20, 0), (-30, 0), (0, -10), (0, -20),
           (0, 10), (0, 20), (25, -20)]


def scenario_text() -> str:
    steps = ["road 4s"] + [f"look {y},{p} 2s\nroad 1s" for y, p in TARGETS]
    script = "\n".join(steps)
    return (f'[scenario]\nname = "gaze_sweep"\ndescription = "eyes-only looks at known angles"\n'
            f'script = """\n{script}\n"""\n')


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photo", default="astronaut")
    ap.add_argument("--ir", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from dms.capture import video_frames
    from dms.config import VisionSettings
    from dms.engine.settings import EngineSettings
    from dms.monitor import DriverMonitor
    from dms.synth.render import render_scenario

    toml = Path(tempfile.gettempdir()) / "dms_gaze_sweep.toml"
    toml.write_text(scenario_text())
    clip = render_scenario(str(toml), photo=args.photo, ir=True if args.ir else None)
    rows = list(csv.DictReader(Path(clip.poses_csv).read_text().splitlines()))
    truth = np.array([[float(r["t"]), float(r["gaze_yaw_deg"]), float(r["gaze_pitch_deg"])]
                      for r in rows])
    monitor = DriverMonitor.from_settings(VisionSettings(), EngineSettings())
    held: dict[tuple[int, int], list[tuple[float, float]]] = defaultdict(list)
    for f in video_frames(str(clip.video)):
        eyes = monitor.step(f.image, f.t_s).frame.eyes
        if eyes is None or eyes.gaze_yaw_deg is None or eyes.gaze_pitch_deg is None:
            continue
        i, j0, j1 = (int(np.argmin(abs(truth[:, 0] - t))) for t in (f.t_s, f.t_s - 0.3,
                                                                      f.t_s + 0.3))
        if not (truth[j0, 1:] == truth[i, 1:]).all() or not (truth[j1, 1:] == truth[i, 1:]).all():
            continue  # not a steady hold (a saccade nearby)
        held[(round(truth[i, 1]), round(truth[i, 2]))].append((eyes.gaze_yaw_deg,
                                                              eyes.gaze_pitch_deg))
    med = {k: np.median(np.array(v), axis=0) for k, v in held.items()}
    y0, p0 = med.get((0, 0), np.zeros(2))
    out = [{"true_yaw": k[0], "true_pitch": k[1], "yaw": round(float(m[0]), 1),
            "pitch": round(float(m[1]), 1), "rel_yaw": round(float(m[0] - y0), 1),
            "rel_pitch": round(float(m[1] - p0), 1), "frames": len(held[k])}
           for k, m in sorted(med.items())]
    if args.json:
        print(json.dumps({"photo": args.photo, "ir": args.ir, "targets": out}))
        return 0
    print(f"{args.photo}{' IR' if args.ir else ''}: true (yaw, pitch) -> measured, relative to "
          "straight ahead")
    for r in out:
        print(f"  ({r['true_yaw']:+3d}, {r['true_pitch']:+3d}) -> {r['yaw']:+6.1f} "
              f"{r['pitch']:+6.1f}   rel {r['rel_yaw']:+6.1f} {r['rel_pitch']:+6.1f}  "
              f"({r['frames']} frames)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
