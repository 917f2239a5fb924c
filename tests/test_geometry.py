import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dms import geometry as g

angles = st.tuples(
    st.floats(-80, 80), st.floats(-85, 85), st.floats(-80, 80)
)


@given(angles)
@settings(max_examples=200, deadline=None)
def test_euler_round_trip(a):
    R = g.rotation_from_euler(*a)
    assert np.allclose(R @ R.T, np.eye(3), atol=1e-9)
    assert np.allclose(g.euler_from_rotation(R), a, atol=1e-6)


@given(angles)
@settings(max_examples=100, deadline=None)
def test_mirror_negates_yaw_and_roll_keeps_pitch(a):
    p, y, r = g.euler_from_rotation(g.mirror_rotation(g.rotation_from_euler(*a)))
    assert np.allclose((p, y, r), (a[0], -a[1], -a[2]), atol=1e-6)


def test_sign_convention_matches_aflw_pose_para():
    # head down (chin toward chest) turns the face normal toward -y (camera y is up)
    assert g.rotation_from_euler(-20, 0, 0)[1, 2] < 0
    # positive yaw turns the nose toward the image left (-x): checked on AFLW2000 labels
    assert g.rotation_from_euler(0, 30, 0)[0, 2] < 0


def test_6d_gram_schmidt_matches_matrix():
    M = g.aflw_matrix_from_euler(10, -35, 5)
    v = np.concatenate([M[:, 0] * 3.0, M[:, 1] + 0.2 * M[:, 0]])
    assert np.allclose(g.rotation_from_6d(v), M, atol=1e-9)
    batch = g.rotation_from_6d(np.stack([v, v]))
    assert batch.shape == (2, 3, 3)


def test_relative_rotation_of_turned_neutral():
    # An A-pillar camera sees the neutral head at yaw -30; a head at yaw -30 is "on road".
    Rn = g.rotation_from_euler(0, -30, 0)
    rel = g.relative_rotation(Rn, g.rotation_from_euler(0, -30, 0))
    assert np.allclose(rel, np.eye(3), atol=1e-12)
    p, y, r = g.euler_from_rotation(g.relative_rotation(Rn, g.rotation_from_euler(0, 10, 0)))
    assert y == pytest.approx(40.0, abs=1e-9) and abs(p) < 1e-9 and abs(r) < 1e-9


def test_weighted_procrustes_recovers_similarity():
    rng = np.random.default_rng(1)
    src = rng.normal(size=(40, 3))
    R = g.rotation_from_euler(12, -40, 7)
    dst = 1.7 * src @ R.T + np.array([3.0, -2.0, 5.0])
    dst[0] += 50.0  # an outlier with zero weight must not matter
    w = np.ones(40)
    w[0] = 0.0
    s, R_fit, t = g.weighted_procrustes(src, dst, w)
    assert s == pytest.approx(1.7, rel=1e-9)
    assert g.geodesic_deg(R_fit, R) < 1e-6


def test_mean_rotation_and_geodesic():
    Rs = np.stack([g.rotation_from_euler(0, y, 0) for y in (-10, 0, 10)])
    assert g.geodesic_deg(g.mean_rotation(Rs), np.eye(3)) < 1e-9
    assert g.geodesic_deg(np.eye(3), g.rotation_from_euler(0, 25, 0)) == pytest.approx(25)
