"""Calibration profiles on disk: round trip, atomic writes, clear errors on bad files."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from dms.calibration_store import (
    SCHEMA_VERSION,
    CalibrationStoreError,
    delete_calibration,
    list_profiles,
    load_calibration,
    profile_path,
    save_calibration,
)
from dms.engine import EngineSettings
from dms.engine.calibration import calibrate_neutral
from dms.geometry import geodesic_deg
from dms.sim.scenarios import ScenarioBuilder

S = EngineSettings()


@pytest.fixture(scope="module")
def result():  # type: ignore[no-untyped-def]
    obs = ScenarioBuilder(S, rate_hz=30, noise_deg=0.5, seed=1).road(5).build().observations
    return calibrate_neutral(obs, S.calibration, S.mount)


def test_round_trip(tmp_path: Path, result) -> None:  # type: ignore[no-untyped-def]
    now = datetime(2026, 11, 21, 10, 0, tzinfo=timezone.utc)
    path = save_calibration(tmp_path, "alice", result, mount="dashboard-centre", now=now)
    assert path == tmp_path / "calibration" / "alice.json"
    doc = json.loads(path.read_text())
    assert doc["schema_version"] == SCHEMA_VERSION
    assert doc["created_utc"] == "2026-11-21T10:00:00Z"
    assert doc["sample_count"] == result.sample_count and "spread_deg" in doc
    stored = load_calibration(tmp_path, "alice")
    assert stored is not None and stored.profile == "alice" and stored.mount == "dashboard-centre"
    assert geodesic_deg(stored.neutral.rotation, result.neutral.rotation) < 1e-5
    assert stored.neutral.source == "explicit"
    assert list_profiles(tmp_path) == ["alice"]
    assert [p.name for p in path.parent.iterdir()] == ["alice.json"]  # no temp file left


def test_overwrite_is_atomic_and_replaces(tmp_path: Path, result) -> None:  # type: ignore[no-untyped-def]
    save_calibration(tmp_path, "bob", result)
    first = profile_path(tmp_path, "bob").stat().st_ino
    save_calibration(tmp_path, "bob", result)
    assert profile_path(tmp_path, "bob").stat().st_ino != first  # a new file was renamed in
    assert len(list((tmp_path / "calibration").iterdir())) == 1


def test_missing_profile_is_none_and_delete(tmp_path: Path, result) -> None:  # type: ignore[no-untyped-def]
    assert load_calibration(tmp_path, "nobody") is None
    save_calibration(tmp_path, "carol", result)
    assert delete_calibration(tmp_path, "carol") and not delete_calibration(tmp_path, "carol")
    assert list_profiles(tmp_path) == []


@pytest.mark.parametrize("text,needle", [
    ("{not json", "not JSON"),
    ("[1, 2]", "not a JSON object"),
    ('{"schema_version": 99}', "schema_version 99"),
    ('{"schema_version": 1, "neutral": {}}', "missing field"),
    ('{"schema_version": 1, "neutral": {"rotation": [[2,0,0],[0,1,0],[0,0,1]]}, '
     '"sample_count": 1, "spread_deg": 0, "created_utc": "x"}', "not a rotation"),
])
def test_corrupt_file_names_the_file(tmp_path: Path, text: str, needle: str) -> None:
    path = profile_path(tmp_path, "dave")
    path.parent.mkdir(parents=True)
    path.write_text(text)
    with pytest.raises(CalibrationStoreError) as err:
        load_calibration(tmp_path, "dave")
    assert str(path) in str(err.value) and needle in str(err.value)


def test_euler_only_document_is_accepted(tmp_path: Path) -> None:
    path = profile_path(tmp_path, "eve")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"schema_version": 1, "created_utc": "2026-11-21T10:00:00Z",
                                "neutral": {"pitch_deg": 5, "yaw_deg": -10, "roll_deg": 0},
                                "sample_count": 10, "spread_deg": 1.0}))
    stored = load_calibration(tmp_path, "eve")
    assert stored is not None
    pitch, yaw, _ = stored.neutral.euler_deg
    assert pitch == pytest.approx(5) and yaw == pytest.approx(-10)


@pytest.mark.parametrize("name", ["", "../etc", ".hidden", "a/b", "x" * 65])
def test_bad_profile_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(CalibrationStoreError, match="profile name"):
        profile_path(tmp_path, name)


def test_unwritable_state_dir(tmp_path: Path, result) -> None:  # type: ignore[no-untyped-def]
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(CalibrationStoreError, match="cannot write"):
        save_calibration(blocker, "x", result)


def test_files_are_0640_and_directories_0750_whatever_the_umask(
        tmp_path: Path, result) -> None:  # type: ignore[no-untyped-def]
    import os
    import stat

    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    old = os.umask(0o022)  # outside systemd: before, profiles and directories were world-readable
    try:
        path = save_calibration(state, "alice", result)
    finally:
        os.umask(old)
    mode = {p: stat.S_IMODE(p.stat().st_mode) for p in (state, path.parent, path)}
    assert mode == {state: 0o750, path.parent: 0o750, path: 0o640}


def test_the_open_eye_aperture_is_stored_and_used_at_once(tmp_path: Path,
                                                           result) -> None:  # type: ignore[no-untyped-def]
    from dms.engine.engine import Engine
    from dms.types import EyeObservation, HeadPose, Observation

    aperture = result.neutral.eye_openness  # the stories' eyes: a baseline in 0.24-0.34
    assert aperture is not None and 0.2 < aperture < 0.4
    path = save_calibration(tmp_path, "alice", result)
    doc = json.loads(path.read_text())
    assert doc["eye_openness"] == pytest.approx(aperture, abs=1e-4)
    stored = load_calibration(tmp_path, "alice")
    assert stored is not None and stored.neutral.eye_openness == pytest.approx(aperture, abs=1e-4)
    # a driver calibrated this way is judged against it from the first frame
    engine = Engine(S, stored.neutral)
    R = stored.neutral.rotation
    eyes = EyeObservation(aperture, aperture, 0.9, 0.0, 0.0, 0.0)
    state = engine.step(Observation(0.0, HeadPose(R, 0, 0, 0, 0.95), eyes=eyes)).state
    assert state.to_dict()["eyes"]["rules"] == "eyes"
    assert state.to_dict()["eyes"]["baseline"] == pytest.approx(aperture, abs=1e-3)
    # files written before the field existed still load (no aperture: learned online)
    del doc["eye_openness"]
    path.write_text(json.dumps(doc))
    old = load_calibration(tmp_path, "alice")
    assert old is not None and old.neutral.eye_openness is None
    doc["eye_openness"] = 3.0
    path.write_text(json.dumps(doc))
    with pytest.raises(CalibrationStoreError, match="eye_openness 3.0 is not within"):
        load_calibration(tmp_path, "alice")
