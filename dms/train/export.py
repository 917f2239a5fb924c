"""ONNX export of a student, matching the runtime contract, and its checks.

Contract (what :mod:`dms.vision.headpose` loads): one input named ``input``, shape
``1 x 3 x S x S`` float32, RGB, ImageNet mean/std (:func:`dms.vision.crop.to_nchw_imagenet` of a
:func:`dms.vision.crop.face_crop` with the test margins); one output named
``rotation_matrix``, shape ``N x 3 x 3`` float32, the AFLW matrix
``M = Rz(roll) Ry(yaw) Rx(pitch)`` (``dms.geometry.euler_from_aflw_matrix(M)`` gives pitch, yaw,
roll). Metadata props record the backbone, size and conventions.

:func:`check_onnx` runs PyTorch and onnxruntime on the same real crops and reports the largest
matrix and angle differences. :func:`to_fp16` and :func:`to_int8` write reduced variants
(fp16 with float32 input/output; int8 static QDQ calibrated on crops) that load the same way.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dms.errors import ModelError
from dms.geometry import euler_from_aflw_matrix

log = logging.getLogger(__name__)

OPSET = 17


@dataclass(frozen=True, slots=True)
class ExportCheck:
    path: str
    faces: int
    max_abs_diff: float  # largest |M_onnx - M_torch| element
    max_angle_diff_deg: float  # largest pitch / yaw / roll difference


def _first(out: Any) -> Any:
    """The rotation output of a model that may return more (``rotation_matrix`` first)."""
    return out[0] if isinstance(out, (tuple, list)) else out


def export_onnx(model: Any, out: str | Path, size_px: int, opset: int = OPSET) -> Path:
    """Write ``model`` (a :class:`dms.train.heads.PoseNet`, or any module whose first output is
    the rotation) as ONNX with the runtime contract. A model may name further outputs
    (``output_names``) and its crop rule (``crop_rule``, a key of
    :data:`dms.vision.crop.CROP_RULES`), which the metadata records for the runtime."""
    import onnx
    import torch

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    dummy = torch.zeros(1, 3, size_px, size_px)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter, on purpose
        torch.onnx.export(
            model,
            (dummy,),
            str(out),
            input_names=["input"],
            output_names=list(getattr(model, "output_names", ("rotation_matrix",))),
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,  # the TorchScript exporter needs no onnxscript and gives static shapes
        )
    m = onnx.load(str(out))
    crop = getattr(model, "crop_rule", "margins")
    props = {
        "dms_task": "head_pose",
        "dms_backbone": getattr(model, "backbone_name", ""),
        "dms_input": f"1x3x{size_px}x{size_px} RGB ImageNet mean/std, dms.vision.crop "
                     f"{'test' if crop == 'margins' else crop} crop",
        "dms_output": "rotation_matrix Nx3x3 = M = Rz(roll) Ry(yaw) Rx(pitch)",
        "dms_crop": crop,
    }
    for k, v in props.items():
        entry = m.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(m)
    onnx.save(m, str(out))
    log.info("exported %s (%d x %d)", out, size_px, size_px)
    return out


def check_crops(size_px: int, count: int = 8, crop_rule: str = "margins") -> np.ndarray:
    """Real face crops for checks: the astronaut photo (public domain), rendered at several
    head poses by :class:`dms.train.datasets.SyntheticHeads` plus the photo itself, cut by the
    crop rule ``crop_rule`` (:data:`dms.vision.crop.CROP_RULES`)."""
    from dms.train.datasets import SyntheticHeads, astronaut_texture, load_image
    from dms.vision.crop import CROP_RULES, face_crop, to_nchw_imagenet

    rule = CROP_RULES[crop_rule]
    img, box = astronaut_texture()
    crops = [to_nchw_imagenet(face_crop(img, box, size_px, rule)[0])]
    synth = SyntheticHeads(seed=123)
    for i in range(count - 1):
        rec = synth.render(i)
        image = load_image(rec.image)  # already an array: returned as is
        crops.append(to_nchw_imagenet(face_crop(image, rec.box, size_px, rule)[0]))
    return np.concatenate(crops)


def check_onnx(
    path: str | Path, model: Any, inputs: np.ndarray | None = None, providers: Sequence[str] = ()
) -> ExportCheck:
    """Run onnxruntime and PyTorch on the same crops (N x 3 x S x S) one at a time."""
    import onnxruntime as ort
    import torch

    sess = ort.InferenceSession(str(path), providers=list(providers) or ["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    if inp.name != "input" or sess.get_outputs()[0].name != "rotation_matrix":
        raise ModelError(f"{path}: input/output names do not follow the runtime contract")
    size = int(inp.shape[2])
    rule = getattr(model, "crop_rule", "margins")
    x = check_crops(size, crop_rule=rule) if inputs is None else np.asarray(inputs, np.float32)
    max_m, max_a = 0.0, 0.0
    model = model.eval().cpu()
    for i in range(len(x)):
        (m_onnx,) = sess.run(["rotation_matrix"], {"input": x[i : i + 1]})
        with torch.no_grad():
            m_torch = _first(model(torch.from_numpy(x[i : i + 1]))).numpy()
        max_m = max(max_m, float(np.abs(m_onnx - m_torch).max()))
        a = np.array(euler_from_aflw_matrix(m_onnx[0])) - np.array(
            euler_from_aflw_matrix(m_torch[0])
        )
        max_a = max(max_a, float(np.abs((a + 180.0) % 360.0 - 180.0).max()))
    return ExportCheck(str(path), len(x), max_m, max_a)


def compare_onnx(a: str | Path, b: str | Path, inputs: np.ndarray) -> float:
    """Largest pitch / yaw / roll difference (deg) between two contract ONNX models."""
    import onnxruntime as ort

    sa = ort.InferenceSession(str(a), providers=["CPUExecutionProvider"])
    sb = ort.InferenceSession(str(b), providers=["CPUExecutionProvider"])
    worst = 0.0
    for i in range(len(inputs)):
        x = {"input": inputs[i : i + 1].astype(np.float32)}
        ea = np.array(euler_from_aflw_matrix(sa.run(None, x)[0][0]))
        eb = np.array(euler_from_aflw_matrix(sb.run(None, x)[0][0]))
        worst = max(worst, float(np.abs((ea - eb + 180.0) % 360.0 - 180.0).max()))
    return worst


def to_fp16(src: str | Path, out: str | Path) -> Path:
    """Float16 weights and compute, float32 input and output (for GPUs / TensorRT)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    m = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(m, str(out))
    return Path(out)


def store_fp16(src: str | Path, out: str | Path, min_elements: int = 16,
               keep_fp32: Sequence[str] = ()) -> Path:
    """The same graph with float16 **storage** and float32 compute: each float32 weight of at
    least ``min_elements`` values is stored as float16 and widened by a ``Cast`` node, which
    onnxruntime folds into a float32 constant when it loads the model. Half the file, the
    speed of float32 on CPUs (a float16 graph from :func:`to_fp16` is slower there), and
    the output within float16 rounding of the weights. Weights whose name contains one of
    ``keep_fp32`` (say, a small output layer), or whose values float16 cannot hold, stay float32."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.load(str(src))
    g = m.graph
    casts = []
    keep = []
    for init in g.initializer:
        arr = numpy_helper.to_array(init)
        if (init.data_type != TensorProto.FLOAT or arr.size < min_elements
                or any(k in init.name for k in keep_fp32)
                or float(np.abs(arr).max(initial=0.0)) > 6.0e4):
            keep.append(init)
            continue
        half = numpy_helper.from_array(arr.astype(np.float16), init.name + "_fp16")
        keep.append(half)
        casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT,
                                      name=init.name + "_widen"))
    del g.initializer[:]
    g.initializer.extend(keep)
    nodes = casts + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    entry = m.metadata_props.add()
    entry.key, entry.value = "dms_storage", "float16 weights, float32 compute"
    onnx.checker.check_model(m)
    onnx.save(m, str(out))
    return Path(out)


def to_int8(src: str | Path, out: str | Path, calibration: np.ndarray) -> Path:
    """Static int8 (QDQ, per-channel weights) calibrated on crops (N x 3 x S x S)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"input": calibration[i : i + 1]} for i in range(len(calibration))])

        def get_next(self) -> dict | None:
            return next(self.it, None)

    out = Path(out)
    pre = out.with_suffix(".pre.onnx")
    quant_pre_process(str(src), str(pre))
    try:
        quantize_static(
            str(pre),
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
        )
    finally:
        pre.unlink(missing_ok=True)
    return out
