"""Small real ONNX graphs built by the tests (no weights downloaded): they exercise the
CNN head-pose backend's input handling and every output format it understands."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def head_pose_onnx(
    path: Path, outputs: dict[str, np.ndarray], size: int = 64, reshape_3x3: str | None = None
) -> Path:
    """input [1,3,S,S] -> spatial mean -> for each output name: constant bias vector.

    Each output is ``mean @ 0 + bias`` so it does not depend on the image; ``reshape_3x3``
    names an output that is reshaped to (1, 3, 3).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("ReduceMean", ["input", "axes"], ["m"], keepdims=0)]
    inits = [numpy_helper.from_array(np.array([2, 3], np.int64), "axes")]
    outs = []
    for name, bias in outputs.items():
        k = int(bias.size)
        inits += [
            numpy_helper.from_array(np.zeros((3, k), np.float32), f"{name}_w"),
            numpy_helper.from_array(bias.astype(np.float32).reshape(k), f"{name}_b"),
        ]
        mm, raw = f"{name}_mm", name if name != reshape_3x3 else f"{name}_flat"
        nodes += [
            helper.make_node("MatMul", ["m", f"{name}_w"], [mm]),
            helper.make_node("Add", [mm, f"{name}_b"], [raw]),
        ]
        if name == reshape_3x3:
            inits.append(numpy_helper.from_array(np.array([1, 3, 3], np.int64), "shape33"))
            nodes.append(helper.make_node("Reshape", [raw, "shape33"], [name]))
            outs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 3, 3]))
        else:
            outs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, k]))
    graph = helper.make_graph(
        nodes,
        "tiny_head_pose",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
        outs,
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
