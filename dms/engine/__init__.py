"""The driver-state engine: pure (numpy + stdlib), no I/O, no clock.

``filter`` smooths the head rotation, ``calibration`` finds the neutral pose, ``policy`` is
the state machine, ``events`` the records it emits, ``engine`` chains them. The synthetic
driving stories for tests and benchmarks are the simulator's (:mod:`dms.sim`).
"""

from dms.engine.calibration import CalibrationRefused, CalibrationResult, NeutralPose
from dms.engine.engine import Engine, EngineState, RelativePose, StepResult
from dms.engine.events import Event, EventType, Phase, Reason
from dms.engine.settings import EngineSettings, load_engine_settings

__all__ = [
    "CalibrationRefused",
    "CalibrationResult",
    "Engine",
    "EngineSettings",
    "EngineState",
    "Event",
    "EventType",
    "NeutralPose",
    "Phase",
    "Reason",
    "RelativePose",
    "StepResult",
    "load_engine_settings",
]
