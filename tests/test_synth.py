"""Synthetic driver videos: script parsing, trajectories, the declared expected events (and
that the engine meets them on the rendered ground truth), rendering, and the embedded
estimator reading rendered poses back with the right signs."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest

from dms.cli import main
from dms.engine.engine import Engine
from dms.engine.events import Phase
from dms.geometry import euler_from_rotation, rotation_from_euler
from dms.paths import models_dir
from dms.synth import script as S
from dms.synth.evaluate import read_truth_csv
from dms.synth.lift import lift_photo
from dms.synth.render import FaceRenderer, SceneSettings, render_scenario
from dms.synth.script import (
    FrameTruth,
    ScriptError,
    Trajectory,
    events_json,
    list_scenarios,
    load_scenario,
    parse_script,
    truth_eyes,
)
from dms.types import HeadPose, Observation
from dms.vision.detect import create_detector, select_driver
from dms.vision.landmark_pose import LandmarkHeadPose

# ----------------------------------------------------------------- parsing


def test_parse_steps_durations_and_switches() -> None:
    sc = parse_script("road 5s; glance left-mirror 1.2s\n# comment\nroad 500ms ; "
                      "sunglasses on; nod x3 over 12s; slump 4; light 0.5 over 2s; occlude 2s")
    kinds = [s.kind for s in sc.segments]
    assert kinds[:3] == ["road", "glance", "road"]
    assert kinds.count("nod") == 3
    assert sc.segments[1].target == "left_mirror"
    assert sc.segments[1].duration_s == pytest.approx(1.2)
    assert sc.segments[2].duration_s == pytest.approx(0.5)
    assert sc.segments[2].line == 3
    assert sc.duration_s == pytest.approx(5 + 1.2 + 0.5 + 12 + 4 + 2)
    nods = [s for s in sc.segments if s.kind == "nod"]
    assert nods[0].start_s > 6.7  # spread over the 12 s, road first
    assert [sw.kind for sw in sc.switches] == ["sunglasses", "light"]
    assert sc.switches[0].t_s == pytest.approx(6.7)
    explicit = parse_script("glance 20,-10,5 2s").segments[0]
    assert (explicit.yaw_deg, explicit.pitch_deg, explicit.roll_deg) == (20.0, -10.0, 5.0)
    # the engine's own steps: speed/steering carry nothing to render, lost is a blocked camera
    engine = parse_script("speed 0; road 2; steering 10; lost 3; speed none")
    assert [(s.kind, s.duration_s) for s in engine.segments] == [("road", 2.0), ("block", 3.0)]
    assert engine.switches == ()


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("road 5s\nglance left-mirorr 1s", "line 2, step 'glance left-mirorr 1s'"),
        ("road 5s; glance left-mirorr 1s", "did you mean 'left-mirror'"),
        ("road five", "'five' is not a duration"),
        ("road 0s", "must be > 0"),
        ("jump 3s", "unknown step 'jump'"),
        ("rode 3s", "did you mean 'road'"),
        ("nod x3 over 2s", "3 nods need at least"),
        ("nod sideways", "unexpected 'sideways'"),
        ("glance infotainment 0.5s", "at least"),
        ("sunglasses maybe", "sunglasses on"),
        ("light 9", "outside"),
        ("sunglasses on", "no step that takes time"),
        ("glance 1,2,3,4 2s", "YAW,PITCH"),
        ("road 1s; glance_lost passenger 2s", "engine's pose stories only"),
        ("road 1s; expect slump L3 0..2", "end by the script's end"),
    ],
)
def test_script_errors_name_line_and_token(text: str, needle: str) -> None:
    with pytest.raises(ScriptError) as info:
        parse_script(text, source="x.txt")
    assert needle in str(info.value)
    assert str(info.value).startswith("x.txt")


def test_scenario_files(tmp_path) -> None:  # type: ignore[no-untyped-def]
    names = list_scenarios()
    for required in ("normal_driving", "long_glance", "time_sharing", "nodding", "slump",
                     "face_loss", "demo"):
        assert required in names
    assert 60.0 <= load_scenario("demo").script.duration_s <= 90.0
    bad = tmp_path / "bad.toml"
    bad.write_text('[scenario]\nscript = "road 1s"\n[render]\nfsp = 3\n', encoding="utf-8")
    with pytest.raises(Exception, match="fsp: unknown setting"):
        load_scenario(bad)
    bad.write_text('[scenario]\nscript = "road 1s; glance moon 2s"\n', encoding="utf-8")
    with pytest.raises(ScriptError, match="unknown glance target 'moon'"):
        load_scenario(bad)
    with pytest.raises(Exception, match="no such scenario"):
        load_scenario("no_such_scenario")


# ----------------------------------------------------------------- trajectory


def test_trajectory_timing_and_convention() -> None:
    sc = parse_script("road 2s; glance infotainment 3s; road 1s; nod; slump 4s; away 3s")
    tr = Trajectory(sc, neutral_deg=(0.0, 0.0, 0.0), sway=False)
    yaw_t, pitch_t = S.glance_targets()["infotainment"]
    assert tr.relative(1.9) == (0.0, 0.0, 0.0)
    held = tr.relative(2.0 + S.GLANCE_TURN_S + 0.01)
    assert held[0] == pytest.approx(yaw_t) and held[1] == pytest.approx(pitch_t)
    assert tr.relative(2.0 + S.GLANCE_TURN_S / 2)[0] == pytest.approx(yaw_t / 2, abs=1e-6)
    assert tr.relative(4.999)[0] == pytest.approx(0.0, abs=0.01)
    nod_start = 6.0
    deepest = tr.relative(nod_start + S.NOD_DROP_S + 0.1)[1]
    assert deepest == pytest.approx(-S.NOD_DEPTH_DEG)
    assert tr.relative(nod_start + S.NOD_S - 0.001)[1] == pytest.approx(0.0, abs=0.01)
    slump = tr.at(nod_start + S.NOD_S + 2.0)
    assert slump.rel_pitch_deg == pytest.approx(-S.SLUMP_DEPTH_DEG)
    assert slump.pitch_deg < -30 and slump.face  # pitch < 0 = head down, still visible
    away = tr.at(sc.duration_s - 1.5)
    assert not away.face and away.kind == "away"
    # the camera-frame ground truth is the AFLW reading of R
    R = rotation_from_euler(held[1], held[0], held[2])
    p, y, r = euler_from_rotation(R)
    frame = tr.at(2.0 + S.GLANCE_TURN_S + 0.01)
    assert (frame.pitch_deg, frame.yaw_deg, frame.roll_deg) == pytest.approx((p, y, r))
    frames = tr.frames(10.0)
    assert len(frames) == math.floor(sc.duration_s * 10)
    assert Trajectory(sc, seed=3).at(1.0).yaw_deg == Trajectory(sc, seed=3).at(1.0).yaw_deg


def test_every_shipped_scenario_declares_its_alerts() -> None:
    def kinds(name: str) -> list[tuple[str, str]]:
        return [(e.type, e.reason) for e in load_scenario(name).script.expectations]

    assert kinds("normal_driving") == []
    assert kinds("long_glance") == [("distraction", "long_glance")]
    assert kinds("time_sharing") == [("distraction", "time_sharing")]
    assert kinds("nodding") == [("drowsiness", "nodding")]
    assert kinds("slump") == [("slump", "head_down")]
    assert ("system_degraded", "no_face") in kinds("face_loss")
    for name in list_scenarios():
        script = load_scenario(name).script
        assert script.segments[0].kind == "road" and script.segments[0].duration_s >= 5.0
        assert all(e.level is not None for e in script.expectations), name
    lg = load_scenario("long_glance").script.expectations[0]
    from dms.engine.settings import EngineSettings

    assert lg.lo_s >= lg.step.start_s + EngineSettings().policy.long_glance_s
    doc = events_json(load_scenario("long_glance").script)
    (ev,) = doc["events"]
    assert ev["type"] == "distraction" and abs(ev["t_s"] - lg.t_s) < 1e-3
    assert ev["window_s"] == [lg.lo_s, lg.hi_s] and ev["tolerance_s"] == pytest.approx(
        (lg.hi_s - lg.lo_s) / 2, abs=1e-3)


@pytest.mark.parametrize("name", list_scenarios())
def test_the_engine_meets_the_declared_windows_on_ground_truth(name: str) -> None:
    """The engine fed the perfect ground truth of the render (15 fps, seed 0, no speed as in
    poses.csv; the eyes and mouth as a perfect measurement reads them) raises exactly the
    declared alerts, each inside its window."""
    sc = load_scenario(name)
    expected = sc.script.expectations
    engine = Engine()
    raised, top = [], {}
    for f in Trajectory(sc.script, seed=0).frames(15.0):
        pose = HeadPose(f.rotation, f.pitch_deg, f.yaw_deg, f.roll_deg, 1.0) if f.face else None
        for e in engine.step(Observation(f.t_s, pose, eyes=truth_eyes(f))).events:
            raised += [e] if e.phase is Phase.RAISED else []
            top[e.alert_id] = max(top.get(e.alert_id, 0), e.level)
    assert [(e.type.value, e.reason.value, e.level) for e in raised] == [
        (e.type, e.reason, e.level) for e in expected]
    for got, want in zip(raised, expected, strict=True):
        assert want.contains(got.t_s), (got.t_s, want.lo_s, want.hi_s)
        assert want.max_level is None or top[got.alert_id] <= want.max_level


# ----------------------------------------------------------------- rendering


@pytest.fixture(scope="module")
def astronaut():  # type: ignore[no-untyped-def]
    return lift_photo("astronaut")


@pytest.fixture(scope="module")
def estimator():  # type: ignore[no-untyped-def]
    return create_detector(), LandmarkHeadPose.from_files(models_dir() / "face_landmark.onnx")


def _truth(pitch: float, yaw: float, roll: float, **kw: object) -> FrameTruth:
    R = rotation_from_euler(pitch, yaw, roll)
    return FrameTruth(0.0, R, yaw, pitch, roll, yaw, pitch, roll, True, "road", **kw)  # type: ignore[arg-type]


def test_lifted_face_is_frontal(astronaut) -> None:  # type: ignore[no-untyped-def]
    V = astronaut.vertices_cm
    assert V.shape[0] > 468 and astronaut.triangles.max() < V.shape[0]
    assert V[33, 0] < 0 < V[263, 0]  # subject's right eye on the viewer's left (x < 0)
    assert V[1, 2] > V[33, 2]  # nose tip nearest the camera
    assert V[10, 1] > V[152, 1]  # forehead above chin
    assert V[:468, 0].mean() == pytest.approx(0.0, abs=0.5)


def test_estimator_reads_rendered_poses(astronaut, estimator) -> None:  # type: ignore[no-untyped-def]
    det, est = estimator
    r = FaceRenderer(astronaut, SceneSettings(width_px=480, height_px=360, hfov_deg=50.0,
                                              distance_m=0.6, noise_sigma=2.0))
    poses = [(0, 0, 0), (0, 25, 0), (0, -25, 0), (-20, 0, 0), (15, 0, 0), (0, 0, 15),
             (0, 0, -15), (10, -15, 5)]
    read = {}
    for p, y, ro in poses:
        img = r.render(_truth(p, y, ro))
        face = select_driver(det.detect(img), img.shape)
        assert face is not None, (p, y, ro)
        hp = est.estimate(img, face)
        read[(p, y, ro)] = (hp.pitch_deg, hp.yaw_deg, hp.roll_deg)
    err = np.abs(np.array([read[k] for k in poses]) - np.array(poses, dtype=float))
    assert err.mean(axis=0).max() < 5.0, err
    assert read[(0, 25, 0)][1] > 15  # positive yaw = nose toward the image left
    assert read[(0, -25, 0)][1] < -15
    assert read[(-20, 0, 0)][0] < -10  # pitch < 0 = head down
    assert read[(0, 0, 15)][2] > 8 and read[(0, 0, -15)][2] < -8
    # mirror consistency: +-yaw read back symmetric, pitch unchanged
    assert read[(0, 25, 0)][1] == pytest.approx(-read[(0, -25, 0)][1], abs=4.0)
    assert read[(0, 25, 0)][0] == pytest.approx(read[(0, -25, 0)][0], abs=4.0)
    # a turned head really turns the image: the nose moves toward the image left at yaw > 0
    assert r.landmarks_px(_truth(0, 25, 0).rotation)[1, 0] < r.landmarks_px(
        _truth(0, 0, 0).rotation)[1, 0]


def test_effects_change_the_frame(astronaut) -> None:  # type: ignore[no-untyped-def]
    r = FaceRenderer(astronaut, SceneSettings(width_px=320, height_px=240, noise_sigma=0.0))
    plain = r.render(_truth(0, 0, 0)).astype(int)
    glasses = r.render(_truth(0, 0, 0, sunglasses=True)).astype(int)
    eye = r.landmarks_px(rotation_from_euler(0, 0, 0))[145].astype(int)  # lower eyelid
    patch = np.s_[eye[1] - 1:eye[1] + 2, eye[0] - 1:eye[0] + 2]
    assert glasses[patch].mean() < plain[patch].mean() - 20
    covered = r.render(_truth(0, 0, 0, cover=1.0)).astype(int)
    assert np.abs(covered - plain).mean() > 3
    blocked = r.render(_truth(0, 0, 0, blocked=True))
    assert blocked.mean() < 25  # dim, and no face structure left for a detector to find
    from dms.paths import models_dir
    from dms.vision.blazeface import BlazeFaceDetector
    from dms.vision.runtime import create_session

    det = BlazeFaceDetector(create_session(models_dir() / "face_detection_back.onnx"))
    assert det.detect(r.render(_truth(0, 0, 0)))  # the same face, unblocked, is found
    assert det.detect(blocked) == []
    ir = FaceRenderer(astronaut, SceneSettings(width_px=320, height_px=240, ir=True))
    frame = ir.render(_truth(0, 0, 0))
    assert np.array_equal(frame[..., 0], frame[..., 2])  # grayscale
    moving = r.render(_truth(0, 30, 0), previous=_truth(0, 0, 0))
    still = r.render(_truth(0, 30, 0))
    lap = [cv2.Laplacian(cv2.cvtColor(x, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var()
           for x in (moving, still)]
    assert lap[0] < lap[1]  # motion blur removes detail


def test_render_scenario_files_and_cache(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "clip"
    res = render_scenario("road 0.6s; glance left-mirror 1s", out, fps=5, size="160x120")
    assert not res.cached and res.frames == 8
    truth = read_truth_csv(res.poses_csv)
    assert len(truth) == 8
    cap = cv2.VideoCapture(str(res.video))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    assert n == 8
    ev = json.loads(res.expected_events.read_text())
    assert ev["events"] == [] and ev["duration_s"] == pytest.approx(1.6)
    again = render_scenario("road 0.6s; glance left-mirror 1s", out, fps=5, size="160x120")
    assert again.cached
    other = render_scenario("road 0.6s; glance left-mirror 1s", out, fps=5, size="160x120",
                            seed=1)
    assert not other.cached


def test_cli_render_and_eval(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "c"
    assert main(["synth", "render", "road 0.6s; glance 20,0 0.8s", "--out", str(out),
                 "--fps", "5", "--size", "480x360", "--photo", "grace_hopper"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["frames"] == 7
    assert main(["synth", "eval", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["frames"] == 7 and result["face_found_rate"] == 1.0
    assert result["yaw_mae"] < 6.0
    assert main(["synth", "render", "nowhere", "--out", str(out)]) == 2
    assert "no such scenario" in capsys.readouterr().err
    assert main(["synth", "render", "road 1s; glance moon 2s", "--out", str(out)]) == 2
    assert "unknown glance target 'moon'" in capsys.readouterr().err
