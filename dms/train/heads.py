"""Pose heads and the student network.

The student outputs ``M = Rz(roll) Ry(yaw) Rx(pitch)`` (the AFLW matrix, see
:mod:`dms.geometry`) through the 6D representation of Zhou et al. 2019: two 3-vectors turned
into an orthonormal frame by Gram-Schmidt, exactly as :func:`dms.geometry.rotation_from_6d`.
An optional auxiliary bins head (Hopenet style: 66 bins of 3 deg over +-99 deg per angle)
adds a classification signal during training; the exported graph has the rotation only.
"""

from __future__ import annotations

import torch
from torch import nn

from dms.train.backbones import build_backbone

BIN_COUNT = 66
BIN_WIDTH_DEG = 3.0
BIN_MIN_DEG = -99.0


def rotation_from_6d(v: torch.Tensor) -> torch.Tensor:
    """(N, 6) -> (N, 3, 3) rotation matrices with columns b1, b2, b3 (torch twin of geometry)."""
    a1, a2 = v[:, 0:3], v[:, 3:6]
    b1 = a1 / torch.clamp(torch.linalg.vector_norm(a1, dim=1, keepdim=True), min=1e-8)
    b2 = a2 - torch.sum(b1 * a2, dim=1, keepdim=True) * b1
    b2 = b2 / torch.clamp(torch.linalg.vector_norm(b2, dim=1, keepdim=True), min=1e-8)
    b3 = torch.cross(b1, b2, dim=1)
    return torch.stack([b1, b2, b3], dim=2)


def euler_from_aflw_matrix(M: torch.Tensor) -> torch.Tensor:
    """(N, 3, 3) M -> (N, 3) pitch, yaw, roll in degrees (torch twin, no gimbal branch)."""
    sy = torch.sqrt(M[:, 0, 0] ** 2 + M[:, 1, 0] ** 2)
    pitch = torch.atan2(M[:, 2, 1], M[:, 2, 2])
    yaw = torch.atan2(-M[:, 2, 0], sy)
    roll = torch.atan2(M[:, 1, 0], M[:, 0, 0])
    return torch.rad2deg(torch.stack([pitch, yaw, roll], dim=1))


class PoseNet(nn.Module):
    """Backbone -> linear 6D head -> rotation matrix ``M`` (N, 3, 3).

    With ``bins > 0`` an extra linear layer gives (N, 3, bins) logits for pitch, yaw, roll;
    :meth:`forward_train` returns both, :meth:`forward` only the matrix (what is exported).
    """

    def __init__(self, backbone: str = "resnet18", bins: int = 0, dropout: float = 0.0) -> None:
        super().__init__()
        self.backbone_name = backbone
        self.backbone = build_backbone(backbone)
        width = self.backbone.out_features
        if not isinstance(width, int):
            raise TypeError(f"backbone {backbone!r}: out_features must be an int, got {width!r}")
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head6d = nn.Linear(width, 6)
        # Start at the identity (frontal face): a1 = x, a2 = y, plus small noise from the weights.
        nn.init.normal_(self.head6d.weight, std=1e-3)
        with torch.no_grad():
            self.head6d.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]))
        init_head = getattr(self.backbone, "init_pose_head", None)
        if init_head is not None:  # a face-pretrained backbone knows its pose readout
            init_head(self.head6d)
        self.bins = bins
        self.head_bins = nn.Linear(width, 3 * bins) if bins > 0 else None

    def forward_train(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        f = self.dropout(self.backbone(x))
        M = rotation_from_6d(self.head6d(f))
        logits = None
        if self.head_bins is not None:
            logits = self.head_bins(f).view(-1, 3, self.bins)
        return M, logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rotation_from_6d(self.head6d(self.backbone(x)))


def bin_targets(angles_deg: torch.Tensor, bins: int = BIN_COUNT) -> torch.Tensor:
    """(N, 3) angles -> (N, 3) long bin indices, clamped into [0, bins)."""
    idx = torch.floor((angles_deg - BIN_MIN_DEG) / BIN_WIDTH_DEG).long()
    return torch.clamp(idx, 0, bins - 1)
