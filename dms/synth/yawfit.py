"""Fit the landmark estimator's large-yaw correction on rendered heads (``dms synth yaw-fit``).

FaceMesh's landmarks lean toward a frontal face as the head turns away (its 2-D points, not
just its depths: on a rendered head turned 50 deg the fitted yaw is about 41 deg). Renders give
exact ground truth, so the compression can be measured without touching any evaluation set:
every photo is lifted, rendered over a grid of yaw x pitch x roll in the default cabin scene,
the estimator is run *without* the correction on the true face box, and ``yaw_true ~=
expand_yaw(yaw_measured, knee, gain)`` (:func:`dms.vision.landmark_pose.expand_yaw`) is fitted
by grid search (least absolute error). Renders stay faithful up to about 60 deg of yaw (past
that the lifted head's far side smears), hence the default ``max_yaw_deg`` of 55.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from dms import geometry
from dms.synth.lift import lift_photo
from dms.synth.render import FaceRenderer, SceneSettings
from dms.synth.script import FrameTruth
from dms.types import FaceBox
from dms.vision.landmark_pose import LandmarkHeadPose, expand_yaw

DEFAULT_PHOTOS = ("astronaut", "grace_hopper")
DEFAULT_PITCHES = (-20.0, -10.0, 0.0, 10.0, 20.0)
DEFAULT_ROLLS = (-10.0, 0.0, 10.0)
KNEE_GRID_DEG = np.arange(0.0, 40.0, 1.0)
GAIN_GRID = np.arange(0.0, 1.5, 0.01)
DEFAULT_SCENE = SceneSettings()


@dataclass(frozen=True, slots=True)
class YawFit:
    knee_deg: float
    gain: float
    n: int
    yaw_mae_before: float
    yaw_mae_after: float

    def to_dict(self) -> dict[str, float | int]:
        return {"yaw_knee_deg": self.knee_deg, "yaw_gain": self.gain, "n": self.n,
                "yaw_mae_before": round(self.yaw_mae_before, 3),
                "yaw_mae_after": round(self.yaw_mae_after, 3)}


def sweep(
    estimator: LandmarkHeadPose,
    photos: Sequence[str] = DEFAULT_PHOTOS,
    max_yaw_deg: float = 55.0,
    step_deg: float = 5.0,
    pitches: Sequence[float] = DEFAULT_PITCHES,
    rolls: Sequence[float] = DEFAULT_ROLLS,
    scene: SceneSettings = DEFAULT_SCENE,
) -> np.ndarray:
    """(N, 6) array: true pitch, yaw, roll, then the estimator's, over the render grid.

    The estimator runs with its yaw correction off, on the box of the projected face."""
    raw = LandmarkHeadPose(estimator.landmarker, estimator.mesh,
                           replace(estimator.settings, yaw_gain=0.0), name=estimator.name,
                           mirror_landmarker=estimator.mirror_landmarker)
    n_steps = int(np.floor(max_yaw_deg / step_deg + 1e-9))
    yaws = step_deg * np.arange(-n_steps, n_steps + 1)
    rows = []
    for photo in photos:
        renderer = FaceRenderer(lift_photo(photo), scene)
        for yaw, pitch, roll in itertools.product(yaws, pitches, rolls):
            R = geometry.rotation_from_euler(pitch, yaw, roll)
            img = renderer.render(FrameTruth(0.0, R, yaw, pitch, roll, yaw, pitch, roll,
                                             True, "yaw-fit"))
            pose = raw.estimate(img, FaceBox.around(renderer.landmarks_px(R)[:468], 1.0))
            rows.append([pitch, yaw, roll, pose.pitch_deg, pose.yaw_deg, pose.roll_deg])
    return np.asarray(rows, dtype=np.float64).reshape(-1, 6)


def fit_yaw_expansion(
    true_yaw: np.ndarray,
    measured_yaw: np.ndarray,
    knees: np.ndarray = KNEE_GRID_DEG,
    gains: np.ndarray = GAIN_GRID,
) -> YawFit:
    """Knee and gain (on the grid) minimising the mean |expand(measured) - true|."""
    t = np.asarray(true_yaw, dtype=np.float64)
    m = np.asarray(measured_yaw, dtype=np.float64)
    if t.shape != m.shape or t.size == 0:
        raise ValueError("need equal, non-empty arrays of true and measured yaw")
    best = (float("inf"), 0.0, 0.0)
    for knee in knees:
        corrected = expand_yaw(m, float(knee), gains[:, None])  # one row per gain
        err = np.abs(corrected - t[None, :]).mean(axis=1)
        i = int(np.argmin(err))
        if err[i] < best[0] - 1e-12:
            best = (float(err[i]), float(knee), float(gains[i]))
    return YawFit(knee_deg=best[1], gain=round(best[2], 4), n=int(t.size),
                  yaw_mae_before=float(np.abs(m - t).mean()), yaw_mae_after=best[0])
