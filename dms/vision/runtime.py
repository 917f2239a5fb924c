"""ONNX Runtime sessions from one factory.

Provider order comes from :class:`RuntimeSettings` (TensorRT with fp16 and an engine cache,
then CUDA, then CPU by default); providers this onnxruntime build lacks are skipped, and the
provider that actually runs the model is logged (``session.get_providers()[0]``), not merely
what ``get_available_providers()`` claims.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from dms.errors import ModelError

log = logging.getLogger(__name__)

ProviderName = Literal["tensorrt", "cuda", "cpu"]

_ORT_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


@dataclass(frozen=True, slots=True)
class RuntimeSettings:
    """How ONNX models are run (the ``[vision.runtime]`` table of the config)."""

    providers: tuple[ProviderName, ...] = field(
        default=("tensorrt", "cuda", "cpu"),
        metadata={"doc": "execution providers in order of preference; missing ones are skipped"},
    )
    intra_op_threads: int = field(
        default=1,
        metadata={"doc": "threads inside one operator; 0 lets onnxruntime choose (one per "
                         "core). 1: the embedded models are too small to gain from more (on "
                         "the 2-core dev CPU FaceMesh and the iris model run as fast on one), "
                         "and parallel_pairs runs two of them at once"},
    )
    inter_op_threads: int = field(
        default=1, metadata={"doc": "threads across operators (1: sequential graph execution)"}
    )
    opencv_threads: int = field(
        default=1,
        metadata={"doc": "threads OpenCV's own loops (the crops, colour conversions) may use, "
                         "for the whole process. 1: they run on the calling thread; OpenCV's "
                         "pool costs more than it saves on images this small (the mesh crop "
                         "0.5 -> 0.28 ms CPU a frame on the 2-core dev machine, docs/"
                         "benchmarks.md s.17) and takes cores the models need"},
    )
    parallel_pairs: bool = field(
        default=True,
        metadata={"doc": "run a frame's two independent model passes (FaceMesh on the crop and "
                         "on its mirror image; the two eyes) on two threads at once. Same "
                         "results; on a 2-core CPU the FaceMesh pair takes 1.6 ms instead of "
                         "3.0 (docs/benchmarks.md s.11)"},
    )
    trt_fp16: bool = field(default=True, metadata={"doc": "TensorRT: build fp16 engines"})
    trt_engine_cache_dir: str = field(
        default="",
        metadata={"doc": "TensorRT engine cache directory; empty: <state dir>/trt-cache"},
    )
    trt_workspace_mb: int = field(default=1024, metadata={"doc": "TensorRT builder workspace"})

    def validate(self) -> None:
        if not self.providers:
            raise ValueError("providers: at least one provider is needed (e.g. ['cpu'])")
        if self.intra_op_threads < 0 or self.inter_op_threads < 0:
            raise ValueError("thread counts must be >= 0")
        if self.opencv_threads < 1:
            raise ValueError("opencv_threads must be >= 1")


CPU_ONLY = RuntimeSettings(providers=("cpu",))

_A = TypeVar("_A")
_B = TypeVar("_B")


class PairRunner:
    """Runs two independent calls (two model passes of one frame), on two threads when
    ``parallel``: onnxruntime releases the GIL while a model runs, so on a multi-core CPU the
    pair takes about as long as one pass. Both calls have ended before it returns or raises
    (the first call's exception wins when both fail). ``second`` must not use a PairRunner
    itself (the process has one worker thread).
    """

    _lock = threading.Lock()
    _pool: ThreadPoolExecutor | None = None  # one worker for the process, made on first use

    def __init__(self, parallel: bool) -> None:
        self.parallel = parallel

    @classmethod
    def _worker(cls) -> ThreadPoolExecutor:
        with cls._lock:
            if cls._pool is None:
                cls._pool = ThreadPoolExecutor(1, thread_name_prefix="dms-pair")
            return cls._pool

    def both(self, first: Callable[[], _A], second: Callable[[], _B]) -> tuple[_A, _B]:
        if not self.parallel:
            return first(), second()
        future = self._worker().submit(second)
        try:
            a = first()
        except BaseException:
            future.exception()  # waits: the second call never outlives this one
            raise
        return a, future.result()


def _provider_list(settings: RuntimeSettings, available: list[str]) -> list[Any]:
    out: list[Any] = []
    for name in settings.providers:
        ort_name = _ORT_NAMES[name]
        if ort_name not in available:
            log.debug("provider %s is not in this onnxruntime build; skipped", ort_name)
            continue
        if name == "tensorrt":
            cache = settings.trt_engine_cache_dir or str(Path.home() / ".cache" / "dms" / "trt")
            Path(cache).mkdir(parents=True, exist_ok=True)
            out.append(
                (
                    ort_name,
                    {
                        "trt_fp16_enable": settings.trt_fp16,
                        "trt_engine_cache_enable": True,
                        "trt_engine_cache_path": cache,
                        "trt_max_workspace_size": settings.trt_workspace_mb * 1024 * 1024,
                    },
                )
            )
        else:
            out.append(ort_name)
    if not out:
        out.append(_ORT_NAMES["cpu"])
    return out


def check_onnx_file(path: str | Path) -> Path:
    """Fail with a clear message if ``path`` is missing, unreadable or not an ONNX model."""
    p = Path(path)
    if not p.exists():
        raise ModelError(f"{p}: model file not found")
    if not p.is_file():
        raise ModelError(f"{p}: not a file")
    try:
        with p.open("rb") as fh:
            head = fh.read(64)
    except OSError as exc:
        raise ModelError(f"{p}: cannot read model file ({exc.strerror})") from None
    # An ONNX ModelProto starts with field 1 (ir_version, varint: 0x08) in practice.
    if len(head) < 8 or head[0] != 0x08:
        raise ModelError(f"{p}: not an ONNX model (unexpected file contents)")
    return p


def pin_opencv_threads(n: int) -> None:
    """OpenCV's thread count for the process (``RuntimeSettings.opencv_threads``); every
    model session is made through :func:`create_session`, which calls this first."""
    import cv2

    if cv2.getNumThreads() != n:
        cv2.setNumThreads(n)
        log.debug("OpenCV threads: %d", n)


def create_session(path: str | Path, settings: RuntimeSettings = CPU_ONLY) -> Any:
    """An ``onnxruntime.InferenceSession`` for ``path`` with the configured providers."""
    import onnxruntime as ort

    p = check_onnx_file(path)
    pin_opencv_threads(settings.opencv_threads)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = settings.intra_op_threads
    opts.inter_op_num_threads = settings.inter_op_threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    providers = _provider_list(settings, ort.get_available_providers())
    try:
        session = ort.InferenceSession(str(p), sess_options=opts, providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{p}: onnxruntime cannot load it: {first[:300]}") from None
    log.info("%s runs on %s", p.name, session.get_providers()[0])
    return session


def square_image_input(session: Any, name: str, what: str) -> tuple[str, bool, int]:
    """(input name, NCHW?, side) of a model taking one square RGB image (1x3xSxS or
    1xSxSx3, fixed size); ModelError naming ``what`` (e.g. "FaceMesh") otherwise."""
    inp = session.get_inputs()[0]
    shape = list(inp.shape)
    if len(shape) != 4 or not (shape[1] == 3 or shape[3] == 3):
        raise ModelError(f"{name}: {what} input must be 1x3xSxS or 1xSxSx3, got {shape}")
    nchw = shape[1] == 3
    h, w = (shape[2], shape[3]) if nchw else (shape[1], shape[2])
    if not isinstance(h, int) or h != w:
        raise ModelError(f"{name}: {what} input must be square with a fixed size: {shape}")
    return inp.name, nchw, int(h)


def output_sizes(session: Any) -> list[int]:
    """The number of values of each output (its fixed dimensions multiplied)."""
    import numpy as np

    return [int(np.prod([d for d in o.shape if isinstance(d, int)]))
            for o in session.get_outputs()]
