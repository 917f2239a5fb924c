"""Neutral-pose calibration: explicit (with refusals) and online (bounded), and the pose
relative to neutral composed as rotations."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from dms.engine import CalibrationRefused, Engine, EngineSettings
from dms.engine.calibration import NeutralPose, OnlineNeutral, calibrate_neutral, mount_prior
from dms.geometry import euler_from_rotation, geodesic_deg, relative_rotation, rotation_from_euler
from dms.sim.scenarios import ScenarioBuilder, raised, run
from dms.types import HeadPose, Observation

S = EngineSettings()
C = S.calibration


def still(neutral_deg: tuple[float, float, float], seconds: float = 5.0, noise: float = 0.8,
          seed: int = 0, **kw: object) -> list[Observation]:
    b = ScenarioBuilder(S, rate_hz=30, noise_deg=noise, seed=seed, neutral_deg=neutral_deg,
                        **kw)  # type: ignore[arg-type]
    return list(b.road(seconds).build().observations)


def test_explicit_calibration_finds_the_neutral_and_its_spread() -> None:
    truth = (6.0, -14.0, 2.0)
    result = calibrate_neutral(still(truth), C, S.mount)
    assert geodesic_deg(result.neutral.rotation, rotation_from_euler(*truth)) < 0.5
    assert result.neutral.source == "explicit"
    assert result.sample_count == 150 and result.missing_count == 0
    assert 0.5 < result.spread_deg < 2.5  # ~ noise * sqrt(3)
    assert result.duration_s == pytest.approx(149 / 30)


def test_explicit_calibration_rejects_outliers() -> None:
    truth = (6.0, -14.0, 2.0)
    obs = still(truth, outlier_prob=0.1, outlier_deg=30.0, seed=2)
    result = calibrate_neutral(obs, C, S.mount)
    assert result.rejected_count >= 5
    assert geodesic_deg(result.neutral.rotation, rotation_from_euler(*truth)) < 0.5


def test_refuses_when_the_face_is_missing() -> None:
    obs = still((8.0, -20.0, 0.0))
    obs = [Observation(o.t_s, None) if i % 2 else o for i, o in enumerate(obs)]
    with pytest.raises(CalibrationRefused) as err:
        calibrate_neutral(obs, C, S.mount)
    assert err.value.code == "face_missing" and "face missing" in str(err.value)


def test_refuses_when_the_driver_moved() -> None:
    b = ScenarioBuilder(S, rate_hz=30).road(1)
    for _ in range(4):
        b.glance("left_mirror", 0.6).road(0.4)
    with pytest.raises(CalibrationRefused) as err:
        calibrate_neutral(b.build().observations, C, S.mount)
    assert err.value.code == "moved_too_much" and "moved" in str(err.value)


def test_refuses_a_neutral_far_from_a_mount_hint() -> None:
    mount = dataclasses.replace(S.mount, hint=True)
    p, y, r = (mount.neutral_pitch_deg, mount.neutral_yaw_deg, 0.0)
    obs = still((p, y + C.max_offset_from_mount_deg + 10, r))
    with pytest.raises(CalibrationRefused) as err:
        calibrate_neutral(obs, C, mount)
    assert err.value.code == "not_at_road"
    # without a hint the same pose is a plausible neutral (the camera may be anywhere)
    assert calibrate_neutral(obs, C, S.mount).neutral.source == "explicit"


def test_refuses_a_neutral_no_mount_could_see() -> None:
    yaw = C.neutral_yaw_range_deg[1] + 10.0
    with pytest.raises(CalibrationRefused) as err:
        calibrate_neutral(still((0.0, yaw, 0.0)), C)
    assert err.value.code == "not_at_road" and "outside" in str(err.value)


def test_refuses_too_few_samples_and_no_frames() -> None:
    with pytest.raises(CalibrationRefused) as err:
        calibrate_neutral([], C)
    assert err.value.code == "no_frames"
    with pytest.raises(CalibrationRefused) as err:
        calibrate_neutral(still((0, 0, 0), seconds=0.5), C)
    assert err.value.code == "too_few_samples"


def test_low_confidence_counts_as_missing() -> None:
    obs = [Observation(o.t_s, dataclasses.replace(o.pose, confidence=C.min_confidence / 2))
           for o in still((0, 0, 0)) if o.pose is not None]
    with pytest.raises(CalibrationRefused, match="face missing"):
        calibrate_neutral(obs, C)


def test_relative_pose_is_composed_not_subtracted() -> None:
    """A-pillar mount: the neutral is turned 35 deg and pitched 10 deg. Looking 25 deg down in
    the driver's own frame must read 25 deg of pitch and no yaw."""
    neutral = rotation_from_euler(10.0, 35.0, 0.0)
    R = neutral @ rotation_from_euler(-25.0, 0.0, 0.0)
    eng = Engine(S, neutral=NeutralPose(neutral))
    rel = eng.step(Observation(0.0, HeadPose(R, *euler_from_rotation(R)))).relative
    assert rel is not None
    assert rel.pitch_deg == pytest.approx(-25.0, abs=1e-6)
    assert rel.yaw_deg == pytest.approx(0.0, abs=1e-6)
    naive = np.subtract(euler_from_rotation(R), euler_from_rotation(neutral))
    assert np.abs(naive - (-25.0, 0.0, 0.0)).max() > 3.0  # Euler subtraction is wrong here


def test_explicit_calibration_takes_precedence_over_learning() -> None:
    truth = (6.0, 30.0, 0.0)
    result = calibrate_neutral(still(truth), C)
    eng = Engine(S, neutral=result.neutral)
    assert eng.calibrated and eng.state.calibration is not None
    assert eng.state.calibration.source == "explicit"
    # a driver sitting elsewhere than calibrated: the explicit neutral is kept (clamped
    # refinement only after online_refine_min_s), so a 10 s offset drive alerts
    off = (6.0, 30.0 + S.zones.yaw_inboard_deg + 6.0, 0.0)
    drive = ScenarioBuilder(S, rate_hz=20, neutral_deg=off).road(10).build()
    assert raised(run(drive, eng))
    assert np.array_equal(eng.neutral.rotation, result.neutral.rotation)


def test_online_refinement_of_an_explicit_calibration_after_a_minute() -> None:
    truth = (4.0, -12.0, 0.0)
    base = NeutralPose.from_euler(truth[0] - 4.0, truth[1] - 8.0, 0.0)
    eng = Engine(S, neutral=base)
    sc = ScenarioBuilder(S, rate_hz=10, noise_deg=1.0, neutral_deg=truth, seed=5).road(
        C.online_refine_min_s + 10).build()
    ready_at = None
    for o in sc.observations:
        state = eng.step(o).state
        assert state.calibration is not None
        if state.calibration.source == "online" and ready_at is None:
            ready_at = o.t_s
    assert ready_at is not None
    assert C.online_refine_min_s - 0.5 <= ready_at <= C.online_refine_min_s + 1.5
    pitch, yaw, _ = euler_from_rotation(
        relative_rotation(rotation_from_euler(*truth), eng.neutral.rotation))
    assert abs(pitch) < 1.0 and abs(yaw) < 1.0


def test_online_refinement_is_clamped_to_its_range() -> None:
    base = NeutralPose.from_euler(0.0, -10.0, 0.0)
    est = OnlineNeutral(C, base)
    far = base.rotation @ rotation_from_euler(0.0, 19.0, 0.0)  # inside the gate, beyond clamp
    t = 0.0
    while t < C.online_refine_min_s + 2:
        est.update(t, far, learnable=True)
        t += 0.1
    assert est.ready
    pitch, yaw, _ = euler_from_rotation(relative_rotation(base.rotation, est.neutral().rotation))
    assert yaw == pytest.approx(C.online_yaw_range_deg[1], abs=1e-6)


def test_mount_prior_is_only_a_hint() -> None:
    prior = mount_prior(S.mount)
    assert prior.source == "prior"
    assert not S.mount.hint  # the default configuration assumes no mount


def test_the_learned_histogram_is_blurred_bin_by_bin_as_a_whole_blur_would() -> None:
    """issue 21, item 7: the blur of the mount-free neutral's histogram was two large matrix
    products every 0.25 s (70 % of the engine step with BLAS's default threads). It is now
    kept up to date from the bins each pose hits, and faded by a gain; this checks that it
    stays the whole histogram's blur, over a long drive with fading and glances."""
    from dms.engine.calibration import DominantPoseNeutral
    from dms.engine.settings import CalibrationSettings

    rng = np.random.default_rng(7)
    learner = DominantPoseNeutral(CalibrationSettings(online_memory_s=20.0))
    for i in range(3000):
        t = i / 30.0
        away = (i // 150) % 4 == 3  # a glance now and then: a second cluster
        yaw = (35.0 if away else -15.0) + rng.normal(0, 1.5)
        pitch = 6.0 + rng.normal(0, 1.5)
        learner.update(t, rotation_from_euler(pitch, yaw, rng.normal(0, 1.0)), True)
    learner._blur_pending()
    weights = learner._w / learner._gain
    whole = learner._ky @ weights @ learner._kp
    assert np.allclose(learner._blurred / learner._gain, whole, rtol=1e-9, atol=1e-12)
    assert learner.settled and abs(learner.neutral().euler_deg[1] - -15.0) < 1.0


def test_a_capture_collects_its_seconds_then_returns_the_result_or_the_refusal() -> None:
    """The one calibration capture of `dms run` (the calibrate command) and `dms calibrate`:
    None while it collects, then its outcome once; a refusal is returned, not raised."""
    from dms.engine.calibration import CalibrationCapture

    s = EngineSettings()
    obs = still((5.0, -20.0, 0.0), seconds=8.0)
    capture = CalibrationCapture(5.0, s.calibration, s.mount)
    outcomes = [capture.add(o) for o in obs]
    done = [i for i, o in enumerate(outcomes) if o is not None]
    assert len(done) == 1 and obs[done[0]].t_s - obs[0].t_s == pytest.approx(5.0, abs=0.05)
    result = outcomes[done[0]]
    assert not isinstance(result, CalibrationRefused) and result is not None
    assert result.neutral.euler_deg[1] == pytest.approx(-20.0, abs=1.0)
    assert capture.done and capture.add(obs[-1]) is None

    empty = CalibrationCapture(5.0, s.calibration, s.mount)
    no_face = [Observation(t_s=i / 30.0, pose=None) for i in range(60)]
    assert all(empty.add(o) is None for o in no_face)  # 2 s of 5: still collecting
    refused = empty.finish()  # the video ended early
    assert isinstance(refused, CalibrationRefused) and refused.code == "face_missing"
