"""Two model passes of one frame on two threads (RuntimeSettings.parallel_pairs), and the
PRelu rewrite of the shipped landmark models that makes them fast on onnxruntime's CPU."""

from __future__ import annotations

import threading
import time

import numpy as np
import onnx
import pytest

from dms.paths import models_dir
from dms.vision.facemesh import FaceMeshLandmarker, FaceRoi
from dms.vision.runtime import CPU_ONLY, PairRunner, RuntimeSettings, create_session


def test_pair_runs_the_second_call_on_the_worker_thread_and_keeps_the_order() -> None:
    def name() -> str:
        return threading.current_thread().name

    first, second = PairRunner(True).both(name, name)
    assert first == threading.current_thread().name
    assert second.startswith("dms-pair")
    assert PairRunner(False).both(name, name) == (first, first)


def test_pair_raises_the_first_calls_error_only_after_the_second_call_ended() -> None:
    ended = threading.Event()

    def slow() -> int:
        time.sleep(0.2)
        ended.set()
        return 1

    def bad() -> int:
        raise ValueError("first failed")

    with pytest.raises(ValueError, match="first failed"):
        PairRunner(True).both(bad, slow)
    assert ended.is_set()


def test_pair_raises_the_second_calls_error() -> None:
    def bad() -> int:
        raise KeyError("second failed")

    with pytest.raises(KeyError, match="second failed"):
        PairRunner(True).both(lambda: 1, bad)


def test_defaults_run_pairs_in_parallel_on_one_thread_per_model() -> None:
    assert RuntimeSettings().parallel_pairs and RuntimeSettings().intra_op_threads == 1
    assert CPU_ONLY.parallel_pairs


def test_a_session_pins_opencvs_threads_to_the_setting() -> None:
    import cv2

    before = cv2.getNumThreads()
    try:
        cv2.setNumThreads(4)
        create_session(models_dir() / "face_detection_back.onnx")  # the default: 1
        assert cv2.getNumThreads() == 1
        create_session(models_dir() / "face_detection_back.onnx",
                       RuntimeSettings(providers=("cpu",), opencv_threads=2))
        assert cv2.getNumThreads() == 2
    finally:
        cv2.setNumThreads(before)
    with pytest.raises(ValueError, match="opencv_threads must be >= 1"):
        RuntimeSettings(opencv_threads=0).validate()


@pytest.mark.parametrize("file", ["face_landmark.onnx", "iris_landmark.onnx"])
def test_shipped_landmark_models_carry_the_prelu_rewrite(file: str) -> None:
    model = onnx.load(str(models_dir() / file))
    ops = {n.op_type for n in model.graph.node}
    assert "PRelu" not in ops and {"Relu", "Mul", "Add"} <= ops
    props = {p.key: p.value for p in model.metadata_props}
    assert "Relu" in props["rewrite"]


def test_facemesh_and_its_mirror_in_parallel_equal_the_sequential_runs(astronaut) -> None:
    session = create_session(models_dir() / "face_landmark.onnx")
    h, w = astronaut.shape[:2]
    roi = FaceRoi(w * 0.5, h * 0.4, min(h, w) * 0.6, 3.0)
    par = FaceMeshLandmarker(session, parallel=True).landmarks_and_mirrored(astronaut, roi)
    seq = FaceMeshLandmarker(session, parallel=False).landmarks_and_mirrored(astronaut, roi)
    for a, b in zip(par, seq, strict=True):
        np.testing.assert_array_equal(a.points_px, b.points_px)
        assert a.presence == b.presence
    assert not np.array_equal(par[0].points_px, par[1].points_px)  # two different passes



def test_provider_list_keeps_the_order_and_skips_what_the_build_lacks(tmp_path) -> None:
    """A build that has only some of the providers asked for gets those, in the same order,
    TensorRT with its options; with none of them, the CPU."""
    from dms.vision.runtime import _provider_list

    settings = RuntimeSettings(trt_engine_cache_dir=str(tmp_path / "trt"))
    assert _provider_list(settings, ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert not (tmp_path / "trt").exists()  # no engine cache without TensorRT
    every = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    got = _provider_list(settings, every)
    assert [p[0] if isinstance(p, tuple) else p for p in got] == every
    assert got[0][1]["trt_engine_cache_path"] == str(tmp_path / "trt")
    assert (tmp_path / "trt").is_dir()
    assert _provider_list(RuntimeSettings(providers=("tensorrt",)), ["CPUExecutionProvider"]) \
        == ["CPUExecutionProvider"]
