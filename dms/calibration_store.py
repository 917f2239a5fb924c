"""Calibration profiles on disk: one JSON file per driver profile in the state directory.

The file ``<state_dir>/calibration/<profile>.json`` holds::

    {"schema_version": 1, "profile": "default", "created_utc": "2026-11-21T10:00:00Z",
     "neutral": {"pitch_deg": 7.9, "yaw_deg": -20.3, "roll_deg": 0.4,
                 "rotation": [[...], [...], [...]]},
     "sample_count": 148, "rejected_count": 2, "missing_count": 0,
     "spread_deg": 0.9, "duration_s": 5.0, "mount": "dashboard-centre",
     "eye_openness": 0.29}

``eye_openness`` (the driver's open-eye aperture, optional: null when the eyes were not
measured) was added without a schema change: older files without it still load.

Writes are atomic (temp file in the same directory + ``os.replace``). Files are 0640 and the
directories (the state directory and ``calibration/``) 0750, whatever the umask. A corrupt or
foreign file
raises :class:`CalibrationStoreError` naming the file. The pure maths lives in
:mod:`dms.engine.calibration`.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from dms.engine.calibration import CalibrationResult, NeutralPose
from dms.errors import DmsError
from dms.geometry import nearest_rotation, rotation_from_euler
from dms.private import FILE_MODE, private_dir

SCHEMA_VERSION = 1
_PROFILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class CalibrationStoreError(DmsError):
    """A calibration file cannot be read or written."""


@dataclass(frozen=True, slots=True)
class StoredCalibration:
    profile: str
    created_utc: str
    neutral: NeutralPose
    sample_count: int
    spread_deg: float
    mount: str | None
    path: Path
    schema_version: int = SCHEMA_VERSION


def profile_path(state_dir: str | Path, profile: str) -> Path:
    """Path of a profile's file; the name must be 1-64 of [A-Za-z0-9_.-], not starting with
    a dot or dash."""
    if not _PROFILE_RE.match(profile):
        raise CalibrationStoreError(
            f"profile name {profile!r}: use 1-64 letters, digits, '_', '.' or '-'")
    return Path(state_dir) / "calibration" / f"{profile}.json"


def save_calibration(state_dir: str | Path, profile: str, result: CalibrationResult, *,
                     mount: str | None = None, now: datetime | None = None) -> Path:
    """Store ``result`` as ``profile`` atomically; returns the file's path."""
    path = profile_path(state_dir, profile)
    pitch, yaw, roll = result.neutral.euler_deg
    created = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    doc = {
        "schema_version": SCHEMA_VERSION,
        "profile": profile,
        "created_utc": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "neutral": {"pitch_deg": round(pitch, 4), "yaw_deg": round(yaw, 4),
                    "roll_deg": round(roll, 4),
                    "rotation": np.round(result.neutral.rotation, 8).tolist()},
        "sample_count": result.sample_count,
        "rejected_count": result.rejected_count,
        "missing_count": result.missing_count,
        "spread_deg": round(result.spread_deg, 4),
        "duration_s": round(result.duration_s, 3),
        "mount": mount,
        "eye_openness": None if result.neutral.eye_openness is None
        else round(result.neutral.eye_openness, 4),
    }
    try:
        private_dir(Path(state_dir))
        private_dir(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{profile}.", suffix=".tmp", dir=path.parent)
        try:
            os.fchmod(fd, FILE_MODE)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(doc, f, indent=2)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise CalibrationStoreError(f"{path}: cannot write calibration: {exc}") from None
    return path


def load_calibration(state_dir: str | Path, profile: str) -> StoredCalibration | None:
    """The stored calibration of ``profile``, or None when it has none."""
    path = profile_path(state_dir, profile)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CalibrationStoreError(f"{path}: cannot read calibration: {exc}") from None
    return parse_calibration(text, path)


def parse_calibration(text: str, path: Path) -> StoredCalibration:
    """Validate a calibration document; errors name ``path`` and the offending field."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CalibrationStoreError(f"{path}: corrupt calibration file (not JSON: {exc}); "
                                    "delete it and run `dms calibrate` again") from None
    if not isinstance(doc, dict):
        raise CalibrationStoreError(f"{path}: corrupt calibration file (not a JSON object)")
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION:
        raise CalibrationStoreError(
            f"{path}: calibration schema_version {version!r} is not {SCHEMA_VERSION}; "
            "run `dms calibrate` again")
    try:
        n = doc["neutral"]
        if "rotation" in n:
            R = np.asarray(n["rotation"], dtype=np.float64)
            if R.shape != (3, 3) or not np.all(np.isfinite(R)):
                raise ValueError("neutral.rotation is not a finite 3x3 matrix")
            if np.abs(R.T @ R - np.eye(3)).max() > 1e-3 or np.linalg.det(R) < 0:
                raise ValueError("neutral.rotation is not a rotation")
            R = nearest_rotation(R)
        else:
            R = rotation_from_euler(float(n["pitch_deg"]), float(n["yaw_deg"]),
                                    float(n["roll_deg"]))
        sample_count = int(doc["sample_count"])
        spread = float(doc["spread_deg"])
        created = str(doc["created_utc"])
        mount = doc.get("mount")
        eye = doc.get("eye_openness")
        eye = None if eye is None else float(eye)
        if eye is not None and not 0 < eye < 1:
            raise ValueError(f"eye_openness {eye} is not within (0, 1)")
    except (KeyError, TypeError, ValueError) as exc:
        what = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
        raise CalibrationStoreError(f"{path}: corrupt calibration file ({what})") from None
    return StoredCalibration(
        profile=str(doc.get("profile", path.stem)), created_utc=created,
        neutral=NeutralPose(R, "explicit", sample_count, spread, eye), sample_count=sample_count,
        spread_deg=spread, mount=None if mount is None else str(mount), path=path)


def list_profiles(state_dir: str | Path) -> list[str]:
    d = Path(state_dir) / "calibration"
    return sorted(p.stem for p in d.glob("*.json")) if d.is_dir() else []


def delete_calibration(state_dir: str | Path, profile: str) -> bool:
    """Remove a profile's calibration; True when there was one."""
    path = profile_path(state_dir, profile)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True
