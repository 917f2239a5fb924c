"""Losses on rotation matrices: the geodesic angle and the distillation blend.

The geodesic angle between rotations A and B is computed from the chordal distance,
``theta = 2 asin(||A - B||_F / (2 sqrt 2))``, which is exact for rotations, is 0 for equal
matrices and keeps a finite gradient at 0 and near 180 deg (unlike ``acos((tr - 1) / 2)``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dms.train.heads import BIN_COUNT, bin_targets, euler_from_aflw_matrix


def geodesic_angle(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """(N, 3, 3), (N, 3, 3) -> (N,) angles in radians in [0, pi]."""
    d2 = torch.sum((A - B) ** 2, dim=(1, 2))
    s = torch.sqrt(d2 + 1e-12) / (2.0 * math.sqrt(2.0))
    return 2.0 * torch.asin(torch.clamp(s, max=1.0 - 1e-7))


def geodesic_loss(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Mean geodesic angle in radians."""
    return geodesic_angle(A, B).mean()


def distillation_loss(
    pred: torch.Tensor,
    gt: torch.Tensor,
    gt_mask: torch.Tensor,
    teacher: torch.Tensor,
    teacher_conf: torch.Tensor,
    gt_weight: float = 0.5,
) -> torch.Tensor:
    """Per-batch loss blending ground truth and the teachers' soft target.

    Each sample contributes ``a * angle(pred, gt) + (1 - a) * c * angle(pred, teacher)`` with
    ``a = gt_weight`` where ground truth exists (``gt_mask`` true) and ``a = 0`` otherwise, and
    ``c`` the teacher confidence in [0, 1] (0 where no teacher label exists). The sum is divided
    by the total weight, so a batch of confident pseudo-labels weighs like one with ground truth.
    """
    a = gt_weight * gt_mask.float()
    w_t = (1.0 - a) * teacher_conf
    loss = a * geodesic_angle(pred, gt) + w_t * geodesic_angle(pred, teacher)
    return loss.sum() / torch.clamp((a + w_t).sum(), min=1e-6)


def bins_loss(logits: torch.Tensor, target_M: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of (N, 3, bins) logits against the bins of the target's Euler angles."""
    idx = bin_targets(euler_from_aflw_matrix(target_M), logits.shape[-1] or BIN_COUNT)
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), idx.reshape(-1), reduction="none")
    ce = ce.view(-1, 3).mean(dim=1)
    return (ce * weight).sum() / torch.clamp(weight.sum(), min=1e-6)
