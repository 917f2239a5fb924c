"""Shared fixtures. ``../shared`` (beside the checkout) holds research-only faces and SCRFD
models; tests that need it skip with a reason when it is absent, and run when it is present.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort
import pytest

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
SHARED = Path(os.environ.get("DMS_SHARED", ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "data").is_dir():
        pytest.skip(f"needs ../shared beside the checkout (looked in {SHARED}); set DMS_SHARED")
    return SHARED


@pytest.fixture(scope="session")
def aflw_dir(shared_dir: Path) -> Path:
    d = shared_dir / "data" / "aflw2000-64"
    if not d.is_dir():
        pytest.skip(f"needs {d} (64 AFLW2000 faces)")
    return d


@pytest.fixture(scope="session")
def scrfd_models(shared_dir: Path) -> dict[str, Path]:
    found = {p.stem: p for p in sorted((shared_dir / "models").glob("scrfd_*.onnx"))}
    if not found:
        pytest.skip(f"needs SCRFD ONNX files in {shared_dir / 'models'}")
    return found


class CountingSession:
    """A real onnxruntime session that counts its runs (not a fake: every call runs the
    model)."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self.runs = 0

    def run(self, *args: Any, **kwargs: Any) -> Any:
        self.runs += 1
        return self._session.run(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


def model_session(file: str) -> ort.InferenceSession:
    """A one-thread CPU session on a model shipped in models/."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(MODELS / file), opts, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def detector():  # type: ignore[no-untyped-def]
    """The embedded BlazeFace detector."""
    from dms.vision.blazeface import BlazeFaceDetector

    return BlazeFaceDetector(model_session("face_detection_back.onnx"))


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    """The public-domain astronaut portrait shipped in scikit-image (BGR)."""
    skimage = pytest.importorskip("skimage")
    path = Path(skimage.__file__).parent / "data" / "astronaut.png"
    if not path.is_file():
        pytest.skip(f"{path} not installed")
    return cv2.imread(str(path))
