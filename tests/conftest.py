"""Shared fixtures. ``../shared`` (beside the checkout) holds research-only faces and SCRFD
models; tests that need it skip with a reason when it is absent, and run when it is present.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
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
