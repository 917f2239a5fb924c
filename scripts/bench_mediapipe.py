"""Outside reference for `dms bench`: MediaPipe's own FaceMesh pipeline on the same clip.

Not a dms dependency: run it in a throwaway venv with mediapipe 0.10.18 (the last release
whose legacy `solutions` ship their .tflite models):

    python3 -m venv /tmp/mp && /tmp/mp/bin/pip install mediapipe==0.10.18 "numpy<2" \
        opencv-python-headless==4.10.0.84
    /tmp/mp/bin/python scripts/bench_mediapipe.py ~/.cache/dms/bench_640x480.mp4

`--refine` runs the attention mesh with iris landmarks (what dms's eye stage is compared
with). Times `FaceMesh.process` per frame (its own detector + landmark tracking on the previous
frame's ROI, the same idea as dms's tracking) and prints p50/p99 and FPS as JSON, with the
process's CPU time per frame (all threads; `dms bench` reports the same figure), which a
shared machine's load does not inflate as it does the wall time.
"""

from __future__ import annotations

import json
import platform
import sys
import time

import cv2
import mediapipe as mp
import numpy as np


def main(path: str, frames: int = 300, warmup: int = 20, refine: bool = False) -> None:
    cap = cv2.VideoCapture(path)
    imgs = []
    while len(imgs) < frames + warmup:
        ok, img = cap.read()
        if not ok:
            break
        imgs.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
    mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1,
                                           refine_landmarks=refine)
    for img in imgs[:warmup]:
        mesh.process(img)
    ms, found = [], 0
    cpu0 = time.process_time()
    for img in imgs[warmup:]:
        t0 = time.perf_counter()
        res = mesh.process(img)
        ms.append((time.perf_counter() - t0) * 1e3)
        found += res.multi_face_landmarks is not None
    cpu_ms = (time.process_time() - cpu0) * 1e3 / max(len(ms), 1)
    a = np.asarray(ms)
    print(json.dumps({
        "reference": f"mediapipe {mp.__version__} FaceMesh (own detector + tracking"
                     + (", attention mesh with irises)" if refine else ")"),
        "frames": len(ms), "p50_ms": round(float(np.percentile(a, 50)), 3),
        "p99_ms": round(float(np.percentile(a, 99)), 3),
        "fps_p50": round(1000 / float(np.percentile(a, 50)), 1),
        "cpu_ms_per_frame": round(cpu_ms, 3),
        "face_found_fraction": round(found / len(ms), 3),
        "machine": platform.machine(), "python": platform.python_version(),
    }))


if __name__ == "__main__":
    # --refine: the attention mesh with iris landmarks (refine_landmarks=True), the
    # comparable reference for dms with its eye stage
    # --frames N: frames to time (default 300, as `dms bench`)
    n = int(sys.argv[sys.argv.index("--frames") + 1]) if "--frames" in sys.argv else 300
    main(sys.argv[1], frames=n, refine="--refine" in sys.argv[2:])
