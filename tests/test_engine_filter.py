"""The rotation filter: jitter removed, no wrap artefacts, outliers, frame drops, delay bound."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dms.engine.filter import (
    RotationFilter,
    matrix_from_rotvec,
    rotvec_from_matrix,
    settle_delay_bound_s,
)
from dms.engine.settings import EngineSettings, FilterSettings
from dms.geometry import euler_from_rotation, geodesic_deg, rotation_from_euler
from dms.sim.scenarios import jitter_reduction

F = FilterSettings()


@pytest.mark.parametrize("angle_deg", [0.0, 1e-5, 10.0, 90.0, 179.0, 179.99])
def test_log_and_exp_maps_round_trip(angle_deg: float) -> None:
    rng = np.random.default_rng(1)
    axis = rng.normal(size=3)
    w = np.radians(angle_deg) * axis / np.linalg.norm(axis)
    R = matrix_from_rotvec(w)
    assert np.allclose(R.T @ R, np.eye(3), atol=1e-12)
    assert geodesic_deg(matrix_from_rotvec(rotvec_from_matrix(R)), R) < 1e-4


def test_filter_removes_jitter_of_a_still_noisy_head() -> None:
    result = jitter_reduction(EngineSettings(), seed=4, noise_deg=1.5, duration_s=30.0)
    for j in result.values():
        assert j["raw_std_deg"] == pytest.approx(1.5, rel=0.15)
        assert j["filtered_std_deg"] < j["raw_std_deg"] / 2
        assert j["step90_settle_s"] < 0.5


def test_filter_smooths_on_the_rotation_not_on_wrapped_angles() -> None:
    """Roll alternating +179 / -179 deg: a filter on Euler angles would average to ~0."""
    f = RotationFilter(F)
    out = None
    for k in range(100):
        roll = 179.0 if k % 2 else -179.0
        out = f.update(k / 20, rotation_from_euler(0.0, 0.0, roll)).rotation
    assert out is not None
    assert abs(euler_from_rotation(out)[2]) > 178.0


def test_single_frame_outlier_is_held_back() -> None:
    f = RotationFilter(F)
    R0 = rotation_from_euler(5.0, -20.0, 0.0)
    for k in range(20):
        f.update(k / 20, R0)
    spike = f.update(20 / 20, rotation_from_euler(5.0, 40.0, 0.0))
    assert spike.held and geodesic_deg(spike.rotation, R0) < 1e-6
    after = f.update(21 / 20, R0)
    assert not after.held and geodesic_deg(after.rotation, R0) < 1e-6


def test_a_real_fast_step_is_followed_after_one_held_frame() -> None:
    f = RotationFilter(F)
    R0, R1 = rotation_from_euler(0, 0, 0), rotation_from_euler(0, 60, 0)
    for k in range(20):
        f.update(k / 20, R0)
    assert f.update(1.0, R1).held
    out = f.update(1.05, R1)
    assert not out.held
    assert geodesic_deg(out.rotation, R0) > 20  # following, with the adaptive cutoff


@pytest.mark.parametrize("rate_hz", [10.0, 20.0, 30.0])
@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.9])
def test_step_response_respects_the_documented_delay_bound(rate_hz: float,
                                                           fraction: float) -> None:
    dt = 1.0 / rate_hz
    f = RotationFilter(F)
    R0, R1 = rotation_from_euler(0, 0, 0), rotation_from_euler(0, 30, 0)
    f.update(0.0, R0)
    k, crossed = 1, None
    while crossed is None and k < 200:
        out = f.update(k * dt, R1).rotation
        if euler_from_rotation(out)[1] >= fraction * 30.0:
            crossed = (k - 1) * dt  # time since the step arrived
        k += 1
    assert crossed is not None
    assert crossed <= settle_delay_bound_s(F, fraction, dt) + dt + 1e-9


def test_dropped_frames_use_the_real_time_step_and_long_gaps_restart() -> None:
    f = RotationFilter(F)
    R0, R1 = rotation_from_euler(0, 0, 0), rotation_from_euler(0, 10, 0)
    f.update(0.0, R0)
    a = f.update(0.05, R1).rotation  # one frame later
    g = RotationFilter(F)
    g.update(0.0, R0)
    b = g.update(0.2, R1).rotation  # three frames dropped: moves further in one step
    assert geodesic_deg(R0, b) > geodesic_deg(R0, a)
    # no pose for longer than reset_gap_s: restart exactly at the next pose
    assert g.update(0.25, None).rotation is not None
    out = g.update(0.2 + F.reset_gap_s + 0.1, R1)
    assert out.restarted and geodesic_deg(out.rotation, R1) < 1e-9


def test_non_increasing_time_is_ignored() -> None:
    f = RotationFilter(F)
    R0 = rotation_from_euler(0, 0, 0)
    f.update(1.0, R0)
    out = f.update(1.0, rotation_from_euler(0, 10, 0))
    assert geodesic_deg(out.rotation, R0) == 0.0


def test_delay_bound_formula() -> None:
    assert settle_delay_bound_s(F, 0.0, 0.05) == 0.0
    assert math.isinf(settle_delay_bound_s(F, 1.0, 0.05))
    slow = FilterSettings(min_cutoff_hz=F.min_cutoff_hz / 2)
    assert settle_delay_bound_s(slow, 0.6, 0.05) > settle_delay_bound_s(F, 0.6, 0.05)
