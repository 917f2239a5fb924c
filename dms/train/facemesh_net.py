"""FaceMesh's own network as a face-pretrained backbone (converted from the shipped ONNX).

No ImageNet weights can be had offline, and a network trained from scratch on a few thousand
faces learns the faces, not the pose (docs/training.md). ``models/face_landmark.onnx`` (the
MediaPipe FaceMesh landmark model, Apache-2.0) is a network that already knows where the parts
of a face are in 3-D. Its graph is small and plain (Conv, PRelu, Add, MaxPool, channel Pad), so
:class:`OnnxGraph` rebuilds it op for op as PyTorch modules with the ONNX weights; nothing but
the shipped file is needed.

:class:`FaceMeshBackbone` keeps the trunk and the landmark branch up to the 468 x 3 landmark
output (the presence branch is dropped) and returns, as features,
``concat(global-average-pool of the trunk (128), landmarks / S (1404))``. The landmarks make
pose a linear function of the features: for a rigid face, the least-squares map from the
canonical mesh to the landmarks is ``s R`` and is linear in the landmark coordinates, so
:meth:`FaceMeshBackbone.init_pose_head` sets the student's 6D head to exactly that map (the
trunk features start at weight 0). At step 0 the student is therefore an unweighted,
single-pass version of the landmark teacher, and training adapts it to the test-margin crop
and to the renders' large angles.

Input: the student's crop (``1 x 3 x S x S`` RGB, ImageNet mean/std), turned back into
FaceMesh's [0, 1] range inside the graph. S must be a multiple of 64 (the graph's stride-2
stages pair a max-pool with a padded strided convolution; 128 and 192, FaceMesh's own size,
are the useful ones); the 3 x 3 landmark convolution sees its input resized to 3 x 3 when S is
not 192, so any such S works.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dms.errors import InputError

LANDMARK_OUTPUT = "conv2d_20"  # (1, 1404, 1, 1): 468 x (x, y, z) in crop pixels of 192
TRUNK_OUTPUT = "p_re_lu_17"  # (1, 128, 3, 3): the landmark branch before its last block
FACEMESH_SIZE_PX = 192
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


def _default_path() -> Path:
    from dms.paths import models_dir

    return models_dir() / "face_landmark.onnx"


def _key(name: str) -> str:
    return name.replace("/", "_").replace(".", "_").replace(":", "_")


class OnnxGraph(nn.Module):
    """The nodes of an ONNX graph needed for ``outputs``, as PyTorch modules (FaceMesh's ops).

    ``forward(x)`` returns a dict of the requested tensors. ``pool_before`` names nodes whose
    (spatial) input is resized (bilinear) to the given size first, when it differs.
    """

    def __init__(self, path: str | Path, outputs: tuple[str, ...],
                 pool_before: dict[str, int] | None = None) -> None:
        super().__init__()
        import onnx
        from onnx import numpy_helper

        try:
            model = onnx.load(str(path))
        except Exception as exc:  # noqa: BLE001 - onnx raises several types for bad files
            raise InputError(f"{path}: not an ONNX model ({exc})") from None
        g = model.graph
        inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        producer = {o: n for n in g.node for o in n.output}
        needed: set[str] = set()
        stack = list(outputs)
        while stack:
            name = stack.pop()
            node = producer.get(name)
            if node is None or node.output[0] in needed:
                continue
            needed.add(node.output[0])
            stack.extend(i for i in node.input if i not in inits)
        self.input_name = g.input[0].name
        self.outputs = outputs
        self.pool_before = dict(pool_before or {})
        self.steps: list[tuple[str, str, tuple[str, ...]]] = []  # (op, output, inputs)
        self.layers = nn.ModuleDict()
        self.pads: dict[str, tuple[int, ...]] = {}
        # models/build_embedded.py writes each PRelu(x, s) as four nodes named "<y>:prelu*"
        # (x*s + Relu(x)*(1-s), for onnxruntime's speed): read them back as one PReLU.
        prelu_slope = {n.output[0]: (n.input[0], n.input[1]) for n in g.node
                       if n.op_type == "Mul" and n.name.endswith(":prelu_sx")}
        for node in g.node:
            out = node.output[0]
            if out not in needed or node.name.endswith((":prelu_sx", ":prelu_relu",
                                                        ":prelu_rs")):
                continue
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            data_inputs = tuple(i for i in node.input if i not in inits)
            op = node.op_type
            if op == "Add" and node.name.endswith(":prelu"):
                x_name, slope_name = prelu_slope[f"{out}:prelu_sx"]
                op, data_inputs = "PRelu", (x_name,)
                node = onnx.helper.make_node("PRelu", [x_name, slope_name], [out])
            if op == "Conv":
                w = torch.from_numpy(inits[node.input[1]].copy())
                b = torch.from_numpy(inits[node.input[2]].copy()) if len(node.input) > 2 else None
                kernel = (int(w.shape[2]), int(w.shape[3]))
                conv = nn.Conv2d(int(w.shape[1]) * int(attrs.get("group", 1)), int(w.shape[0]),
                                 kernel, stride=tuple(attrs.get("strides", (1, 1))),
                                 groups=int(attrs.get("group", 1)), bias=b is not None)
                conv.weight.data.copy_(w)
                if b is not None and conv.bias is not None:  # bias exists iff b does
                    conv.bias.data.copy_(b)
                self.layers[_key(out)] = conv
                top, left, bottom, right = attrs.get("pads", (0, 0, 0, 0))
                self.pads[out] = (left, right, top, bottom)
            elif op == "PRelu":
                alpha = inits[node.input[1]].reshape(-1)
                act = nn.PReLU(len(alpha))
                act.weight.data.copy_(torch.from_numpy(alpha.copy()))
                self.layers[_key(out)] = act
            elif op == "MaxPool":
                k, s = attrs["kernel_shape"], attrs.get("strides", attrs["kernel_shape"])
                self.layers[_key(out)] = nn.MaxPool2d(tuple(k), tuple(s))
            elif op == "Pad":
                pads = inits[node.input[1]].astype(np.int64).tolist()
                # ONNX (N, C, H, W) begins then ends -> F.pad's last-dim-first pairs
                n = len(pads) // 2
                pairs = [(pads[i], pads[i + n]) for i in range(n)]
                self.pads[out] = tuple(v for pair in reversed(pairs) for v in pair)
            elif op != "Add":
                raise InputError(f"{path}: op {op} is not supported by the converter")
            self.steps.append((op, out, data_inputs))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        env = {self.input_name: x}
        for op, out, inputs in self.steps:
            a = env[inputs[0]]
            if op == "Conv":
                k = self.pool_before.get(out)
                if k is not None and tuple(a.shape[-2:]) != (k, k):  # static at export
                    a = F.interpolate(a, size=(k, k), mode="bilinear", align_corners=False)
                if any(self.pads[out]):
                    a = F.pad(a, self.pads[out])
                env[out] = self.layers[_key(out)](a)
            elif op in ("PRelu", "MaxPool"):
                env[out] = self.layers[_key(out)](a)
            elif op == "Pad":
                env[out] = F.pad(a, self.pads[out])
            else:  # Add
                env[out] = a + env[inputs[1]]
        return {k: env[k] for k in self.outputs}


class FaceMeshBackbone(nn.Module):
    """FaceMesh trunk + landmark branch as features (see the module doc)."""

    out_features = 128 + 1404
    mean: torch.Tensor  # buffers registered in __init__
    std: torch.Tensor

    def __init__(self, path: str | Path | None = None) -> None:
        super().__init__()
        self.graph = OnnxGraph(path or _default_path(), (TRUNK_OUTPUT, LANDMARK_OUTPUT),
                               pool_before={LANDMARK_OUTPUT: 3})
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x01 = x * self.std + self.mean  # ImageNet-normalised -> FaceMesh's [0, 1]
        out = self.graph(x01)
        trunk = out[TRUNK_OUTPUT].mean(dim=(2, 3))
        # landmarks are in pixels of a 192 input whatever S is (the head sees 3 x 3)
        lm = out[LANDMARK_OUTPUT].flatten(1) * (1.0 / FACEMESH_SIZE_PX)
        return torch.cat([trunk, lm], dim=1)

    def init_pose_head(self, head6d: nn.Linear) -> None:
        """Set a linear 6D head to the least-squares pose of the landmarks (module doc).

        With landmarks ``L`` (468 x 3, FaceMesh: x right, y down, z away) in camera axes
        ``D = L * (1, -1, -1)`` and the centred canonical mesh ``X``, the map ``A = D.T P`` with
        ``P = X (X.T X)^-1`` gives ``D ~ X A.T``, ``A ~ s R``, and the student's 6D vector is the
        first two columns of ``M = R.T``: rows 0 and 1 of ``A`` (the centring of ``D`` drops
        out because ``P`` sums to zero).
        """
        from dms.vision.canonical import load_canonical_mesh

        X = load_canonical_mesh().vertices_cm.astype(np.float64)
        X = X - X.mean(axis=0)
        P = X @ np.linalg.inv(X.T @ X)  # (468, 3)
        sign = (1.0, -1.0, -1.0)
        W = np.zeros((6, self.out_features))
        scale = float(FACEMESH_SIZE_PX)  # features are landmarks / 192; undo for the scale
        for r in range(2):
            for c in range(3):
                W[r * 3 + c, 128 + np.arange(468) * 3 + r] = sign[r] * P[:, c] * scale
        # a1 = A[0, :] = M[:, 0], a2 = A[1, :] = M[:, 1]
        with torch.no_grad():
            head6d.weight.copy_(torch.from_numpy(W / np.abs(W).max() * 0.1).float())
            head6d.bias.zero_()
