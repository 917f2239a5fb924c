"""The 3DDFA_V2 MobileNet-0.5 (120 x 120) head-pose network, written for dms.

3DDFA_V2 (Guo et al., "Towards Fast, Accurate and Stable 3D Dense Face Alignment", ECCV 2020;
MIT code; the weights were trained on 300W-LP and count as research / non-commercial) regresses
62 parameters of a 3-D morphable face from a 120 x 120 crop: a 3 x 4 affine camera ``P`` (12),
40 shape and 10 expression coefficients. Its checkpoint also carries a second head, ``fc_lm``,
with 68 2-D landmarks. This module is our own implementation of that network (the layer layout
and the pre/post-processing facts are in ``../shared/models/3ddfa_v2/README.md``), used

* as a **teacher** (exported to ONNX by ``models/build_tddfa.py`` as ``tddfa_mb05``), and
* as the **trunk of a student** (:class:`TddfaPoseNet` keeps every layer, so training starts
  from the teacher itself).

The network: ``conv1`` 3x3 stride 2 (3 -> 16) + BN + ReLU, 13 depthwise-separable blocks
(depthwise 3x3 + BN + ReLU, pointwise 1x1 + BN + ReLU), global average pool, linear heads.

Input (:data:`TDDFA_SIZE_PX` = 120): the BGR crop, ``(pixel - 127.5) / 128``. The dms contract
(``dms.vision.crop.to_nchw_imagenet``: RGB, ImageNet mean/std) is converted inside
:class:`TddfaPoseNet`, so the exported graph takes the same input as every dms head-pose model.
The crop itself is the network's own (``dms.vision.crop.TDDFA_RULE``).

Rotation: the first two rows of ``P[:, :3]`` normalised, the third their cross product, give the
rotation ``R3`` of 3DDFA's camera (x right, y up, z toward the viewer); the AFLW2000 matrix of
:mod:`dms.geometry` is ``M = R3.T`` read in the image's axes (:func:`aflw_from_tddfa`).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dms.errors import InputError

TDDFA_SIZE_PX = 120
# (name, in, out, stride) of the 13 depthwise-separable blocks, width multiplier 0.5
BLOCKS: tuple[tuple[str, int, int, int], ...] = (
    ("dw2_1", 16, 32, 1), ("dw2_2", 32, 64, 2),
    ("dw3_1", 64, 64, 1), ("dw3_2", 64, 128, 2),
    ("dw4_1", 128, 128, 1), ("dw4_2", 128, 256, 2),
    ("dw5_1", 256, 256, 1), ("dw5_2", 256, 256, 1), ("dw5_3", 256, 256, 1),
    ("dw5_4", 256, 256, 1), ("dw5_5", 256, 256, 1), ("dw5_6", 256, 512, 2),
    ("dw6", 512, 512, 1),
)
FEATURES = 512
N_PARAMS = 62
N_LANDMARKS = 68
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class SeparableBlock(nn.Module):
    """Depthwise 3x3 + BN + ReLU, then pointwise 1x1 + BN + ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False)
        self.bn_dw = nn.BatchNorm2d(c_in)
        self.conv_sep = nn.Conv2d(c_in, c_out, 1, 1, 0, bias=False)
        self.bn_sep = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn_dw(self.conv_dw(x)))
        return self.relu(self.bn_sep(self.conv_sep(x)))


class TddfaMobileNet(nn.Module):
    """The network as in the checkpoint: ``forward(x)`` on 3DDFA's input returns the
    normalised 62 parameters and the 136 landmark values (see the module doc)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        for name, c_in, c_out, stride in BLOCKS:
            self.add_module(name, SeparableBlock(c_in, c_out, stride))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc_param = nn.Linear(FEATURES, N_PARAMS)
        self.fc_lm = nn.Linear(FEATURES, 2 * N_LANDMARKS)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for name, *_ in BLOCKS:
            x = getattr(self, name)(x)
        return self.avgpool(x).flatten(1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        return self.fc_param(f), self.fc_lm(f)


def load_tddfa(checkpoint: str | Path) -> TddfaMobileNet:
    """The network with the weights of a 3DDFA_V2 checkpoint (``{'state_dict': ...}``, keys
    with a ``module.`` prefix). Every tensor must match: a partial load is an error."""
    path = Path(checkpoint)
    if not path.is_file():
        raise InputError(f"{path}: no such 3DDFA_V2 checkpoint")
    try:
        # the file is a plain state dict of tensors; weights_only refuses anything else
        ck = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise InputError(f"{path}: not a PyTorch checkpoint ({exc})") from None
    state = ck.get("state_dict", ck) if isinstance(ck, dict) else None
    if not isinstance(state, dict):
        raise InputError(f"{path}: no state_dict in the checkpoint")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    net = TddfaMobileNet()
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    wrong = sorted(k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape))
    if missing or extra or wrong:
        raise InputError(f"{path}: not the MobileNet-0.5 layout (missing {missing[:3]}, "
                         f"unexpected {extra[:3]}, wrong shape {wrong[:3]})")
    net.load_state_dict(state)
    return net.eval()


def load_param_stats(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``mean`` and ``std`` (62 each) of the parameter de-normalisation pickle."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such parameter statistics file")

    class _NumpyOnly(pickle.Unpickler):  # a dict of numpy arrays, nothing else
        def find_class(self, module: str, name: str) -> Any:
            if module.startswith("numpy") or (module, name) == ("builtins", "dict"):
                return super().find_class(module, name)
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed")

    try:
        with open(path, "rb") as f:
            stats = _NumpyOnly(f).load()
        mean = np.asarray(stats["mean"], np.float32).reshape(-1)
        std = np.asarray(stats["std"], np.float32).reshape(-1)
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign pickle
        raise InputError(f"{path}: not 3DDFA's mean/std pickle ({exc})") from None
    if mean.size != N_PARAMS or std.size != N_PARAMS:
        raise InputError(f"{path}: expected 62 means and stds, got {mean.size}, {std.size}")
    return mean, std


def rotation_from_camera(P: torch.Tensor) -> torch.Tensor:
    """(N, 3, 3) rotations from (N, 12) affine cameras: rows 1 and 2 of ``P[:, :3]``
    normalised, the third their cross product (3DDFA's own rule)."""
    A = P.reshape(-1, 3, 4)[:, :, :3]
    r1 = A[:, 0] / A[:, 0].norm(dim=1, keepdim=True).clamp_min(1e-9)
    r2 = A[:, 1] / A[:, 1].norm(dim=1, keepdim=True).clamp_min(1e-9)
    r3 = torch.cross(r1, r2, dim=1)
    return torch.stack([r1, r2, r3], dim=1)


# 3DDFA's model axes are x right, y up, z toward the viewer with the image's y axis flipped;
# dms's AFLW matrix is read in the same model axes (dms/geometry.py), so M is R3 transposed.
_AXES = torch.diag(torch.tensor([1.0, 1.0, 1.0]))


def aflw_from_tddfa(R3: torch.Tensor) -> torch.Tensor:
    """The AFLW2000 matrix ``M`` of :mod:`dms.geometry` from 3DDFA's rotation (batched)."""
    return R3.transpose(1, 2)


class TddfaPoseNet(nn.Module):
    """The network with the dms contract: input ``N x 3 x 120 x 120`` RGB, ImageNet mean/std
    (the crop of ``dms.vision.crop.TDDFA_RULE``); outputs ``rotation_matrix`` (N, 3, 3, the
    AFLW matrix ``M``), ``params`` (N, 62, de-normalised) and ``landmarks`` (N, 68, 2: the
    checkpoint's landmark head, the 68 iBUG points in pixels of the 120 x 120 crop).

    As a student the parameter head keeps its meaning (the rotation is read from ``P``), so
    training starts exactly at the teacher.
    """

    backbone_name = "tddfa_mb05"
    crop_rule = "tddfa"  # dms.vision.crop.CROP_RULES
    output_names = ("rotation_matrix", "params", "landmarks")

    def __init__(self, net: TddfaMobileNet, mean: np.ndarray, std: np.ndarray) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("param_mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("param_std", torch.as_tensor(std, dtype=torch.float32))
        # ImageNet RGB -> 3DDFA BGR: pixel = (x * std + mean) * 255, then (pixel - 127.5) / 128
        scale = torch.tensor(_IMAGENET_STD)[[2, 1, 0]] * 255.0 / 128.0
        shift = (torch.tensor(_IMAGENET_MEAN)[[2, 1, 0]] * 255.0 - 127.5) / 128.0
        self.register_buffer("in_scale", scale.view(1, 3, 1, 1))
        self.register_buffer("in_shift", shift.view(1, 3, 1, 1))

    in_scale: torch.Tensor
    in_shift: torch.Tensor
    param_mean: torch.Tensor
    param_std: torch.Tensor

    def to_native(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(1) * self.in_scale + self.in_shift

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p_norm, lm = self.net(self.to_native(x))
        params = p_norm * self.param_std + self.param_mean
        M = aflw_from_tddfa(rotation_from_camera(params[:, :12]))
        # the landmark head: all x, then all y, in [-1, 1] over the crop
        points = (lm.reshape(-1, 2, N_LANDMARKS).transpose(1, 2) + 1.0) * (0.5 * TDDFA_SIZE_PX)
        return M, params, points


def build_pose_net(checkpoint: str | Path, stats: str | Path) -> TddfaPoseNet:
    net = load_tddfa(checkpoint)
    mean, std = load_param_stats(stats)
    return TddfaPoseNet(net, mean, std).eval()
