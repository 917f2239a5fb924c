"""Value types passed between the stages of the pipeline.

Units are in the names (``_deg``, ``_s``, ``_px``). Angles at interfaces are degrees in the
AFLW2000 / 300W-LP convention (see :mod:`dms.geometry`); rotations inside are 3x3 matrices.
Times are monotonic seconds (``t_s``) stamped once, at capture.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, slots=True)
class FaceBox:
    """One detected face in image pixels.

    ``keypoints`` is a 5x2 array (right eye, left eye, nose, right mouth, left mouth, from the
    viewer's left to right as the detectors order them) or None when the detector gives none.
    """

    x1: float
    y1: float
    x2: float
    y2: float
    score: float
    keypoints: np.ndarray | None = field(default=None, compare=False)

    @classmethod
    def around(cls, points_px: np.ndarray, score: float) -> FaceBox:
        """The extent of ``points_px`` (N x 2 or more columns; x, y first) as a box."""
        p = np.asarray(points_px, dtype=np.float64)
        return cls(float(p[:, 0].min()), float(p[:, 1].min()), float(p[:, 0].max()),
                   float(p[:, 1].max()), float(score))

    @property
    def width(self) -> float:
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        return self.y2 - self.y1

    @property
    def center(self) -> tuple[float, float]:
        return (0.5 * (self.x1 + self.x2), 0.5 * (self.y1 + self.y2))

    @property
    def area(self) -> float:
        return max(0.0, self.width) * max(0.0, self.height)

    def as_list(self) -> list[float]:
        return [float(self.x1), float(self.y1), float(self.x2), float(self.y2)]


@dataclass(frozen=True, slots=True)
class HeadPose:
    """Head rotation of one face.

    ``rotation`` is the 3x3 matrix R that turns the head's own axes into the camera's
    (x right, y up, z toward the camera); ``pitch_deg``, ``yaw_deg``, ``roll_deg`` are the
    AFLW2000 ``Pose_Para`` angles of it (see :func:`dms.geometry.euler_from_rotation`):
    pitch < 0 is head down, roll and yaw flip sign under a horizontal mirror.
    ``confidence`` is in [0, 1].
    """

    rotation: np.ndarray = field(compare=False)
    pitch_deg: float
    yaw_deg: float
    roll_deg: float
    confidence: float = 1.0


@dataclass(frozen=True, slots=True)
class EyeObservation:
    """The eyes and mouth of one face in one frame, as measured in the image (raw, not yet
    normalised to the driver).

    ``openness_right`` / ``openness_left``: eyelid aperture over eye width of the driver's
    right eye (image left) and left eye; a typical open eye reads 0.25-0.35 and a closed one
    below 0.1, but glasses and eye shape shift both, so the engine learns each driver's open
    baseline. None when that eye could not be measured (turned away, out of the image).
    ``confidence`` in [0, 1]: how far the eye measurements can be trusted; low when the eyes
    are occluded (IR-opaque sunglasses, a hand), blurred or seen too obliquely.
    ``gaze_yaw_deg`` / ``gaze_pitch_deg``: the eyes' direction *in the head* (eye-in-head,
    0 = straight ahead of the face), signs as the head pose's: yaw > 0 toward image left
    (the driver's right), pitch > 0 up. None when the irises could not be measured.
    ``mouth_open``: inner-lip aperture over mouth width (0 closed, a yawn reads above ~0.5);
    None when not measured.
    """

    openness_right: float | None
    openness_left: float | None
    confidence: float
    gaze_yaw_deg: float | None = None
    gaze_pitch_deg: float | None = None
    mouth_open: float | None = None

    @property
    def openness(self) -> float | None:
        """The mean openness of the measured eyes (None when neither was measured)."""
        vals = [v for v in (self.openness_right, self.openness_left) if v is not None]
        return sum(vals) / len(vals) if vals else None


@dataclass(frozen=True, slots=True)
class Observation:
    """What the driver-state engine sees for one frame.

    ``pose`` is the absolute head pose (None when no face was found); ``eyes`` the eye and
    mouth measurements (None when not measured: no face, or a pipeline without eye
    measurement, and the engine then runs head-only rules); ``speed_kmh`` and
    ``steering_deg`` are None when the vehicle does not report them.
    """

    t_s: float
    pose: HeadPose | None
    face_box: FaceBox | None = None
    speed_kmh: float | None = None
    steering_deg: float | None = None
    eyes: EyeObservation | None = None

    @property
    def face_present(self) -> bool:
        return self.pose is not None
