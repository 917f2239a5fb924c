"""Students distilled from the ensemble labels: the third-round recipe (docs/training.md).

One recipe per backbone (``models/recipes/student_*.toml``), one command, resumable::

    dms -v train student --config models/recipes/student_tddfa.toml

Data (all in memory, so a step costs the network, not the disk):

* **real faces**: every photo of ``images`` (``../shared/data/faces-aflw``) labelled by the
  ensemble (:mod:`dms.train.ensemble`: 3DDFA_V2 and the landmark path), ``train`` split only;
  the ``val`` split (one photo in ten, by file-name hash) is held out and reported;
* **renders** (optional, ``render_share`` of each batch): near-frontal ``train`` photos lifted to
  3-D and rendered turned in cabin scenes (:mod:`dms.train.rendered`), the exact rotation as
  the label, for the large angles.

Each sample is cut from its photo in ONE affine warp: the student's crop rule
(:data:`dms.vision.crop.TDDFA_RULE`, as at inference) from the face box, moved by a random
scale / shift (the box errors of a detector or a tracker) and an in-plane rotation (label
``M -> M Rz(-phi)``), then mirrored half the time (``M -> F M F``, landmarks swapped left /
right), then the photometric augmentations of :mod:`dms.train.augment` (colour, side light,
near-infrared look, occluders, blur, noise).

Loss: the geodesic angle to the label plus ``landmark_weight`` x the mean distance of the 68
landmarks (crop fractions) to the 3DDFA teacher's, on real faces: a second task that keeps
the trunk's spatial features (and gives the runtime a landmark tracker).

Students:

* ``tddfa_mb05``: 3DDFA_V2's own MobileNet-0.5 and weights (:mod:`dms.train.tddfa_net`), so
  step 0 *is* the teacher; the rotation stays read from the camera matrix of its 62
  parameters;
* any backbone of :mod:`dms.train.backbones` (``resnet18``, ``mobilenet_v3_large``,
  ``mobilenet_v2``...) from scratch (no ImageNet weights offline) with a 6D rotation head and a
  68-landmark head.

A run directory holds ``last.pt`` (resumable: model, optimiser, step, random state),
``step_N.pt`` (weights, for reports), ``model.pt``, ``model.onnx`` / ``model.fp16.onnx`` and
``run.json`` (config, history, held-out figures, export check). The kept model is the last step;
AFLW2000 is never used here.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from dms.errors import InputError
from dms.geometry import euler_from_aflw_matrix, mirror_rotation
from dms.train import augment as aug
from dms.train.augment import AugmentSettings
from dms.vision.crop import TDDFA_RULE, crop_transform, to_nchw_imagenet

log = logging.getLogger(__name__)

# iBUG 68-point indices of the mirror image (left and right swapped)
FLIP_68 = np.array(
    [16 - i for i in range(17)] + [43 - i for i in range(17, 27)] + [27, 28, 29, 30]
    + [66 - i for i in range(31, 36)] + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]
    + [102 - i for i in range(48, 55)] + [114 - i for i in range(55, 60)]
    + [124 - i for i in range(60, 65)] + [132 - i for i in range(65, 68)]
)


@dataclass(frozen=True, slots=True)
class StudentConfig:
    """A student recipe (the TOML file)."""

    out_dir: str = field(default="runs/student", metadata={"doc": "run directory"})
    backbone: str = field(default="tddfa_mb05",
                          metadata={"doc": "tddfa_mb05 (3DDFA_V2 init) or a backbones name"})
    tddfa_dir: str = field(default="../shared/models/3ddfa_v2",
                           metadata={"doc": "3DDFA_V2 checkpoint folder (tddfa_mb05 init)"})
    input_size_px: int = field(default=120, metadata={"doc": "square crop side S"})
    steps: int = field(default=8000, metadata={"doc": "optimiser steps in all"})
    batch_size: int = field(default=64, metadata={"doc": "faces per step"})
    lr: float = field(default=3e-4, metadata={"doc": "peak AdamW learning rate"})
    weight_decay: float = field(default=1e-4, metadata={"doc": "AdamW weight decay"})
    warmup_steps: int = field(default=200, metadata={"doc": "linear warm-up steps"})
    landmark_weight: float = field(default=1.0,
                                   metadata={"doc": "weight of the 68-landmark loss"})
    seed: int = field(default=0, metadata={"doc": "random seed"})
    threads: int = field(default=2, metadata={"doc": "torch CPU threads"})
    images: str = field(default="../shared/data/faces-aflw",
                        metadata={"doc": "folder of real face crops"})
    landmark_labels: str = field(default="runs/data/faces_aflw_labels.jsonl",
                                 metadata={"doc": "landmark-path labels (built when missing)"})
    labels: str = field(default="runs/data/faces_aflw_ensemble.jsonl",
                        metadata={"doc": "ensemble labels (built when missing)"})
    teacher_model: str = field(default="tddfa_mb05",
                               metadata={"doc": "3DDFA teacher ONNX: manifest name or path"})
    max_tddfa_spread_deg: float = field(
        default=20.0, metadata={"doc": "drop photos whose 3DDFA reading and its mirror differ "
                                       "by more (the teacher is unsure)"})
    renders: str = field(default="", metadata={"doc": "render cache (.npz) to build/use; "
                                                      "empty = no renders"})
    render_count: int = field(default=16000, metadata={"doc": "renders in the cache"})
    render_photos: int = field(default=2400, metadata={"doc": "near-frontal photos lifted"})
    render_share: float = field(default=0.0, metadata={"doc": "share of each batch"})
    val_renders: str = field(default="runs/renders/tddfa_val_800.npz",
                             metadata={"doc": "held-out renders (val photos), reported only"})
    scale_jitter: float = field(default=0.1, metadata={"doc": "crop side x U(1 -+ this)"})
    shift_jitter: float = field(default=0.06, metadata={"doc": "crop centre moved by U(-+ "
                                                               "this) x the side"})
    rotate_max_deg: float = field(default=20.0, metadata={"doc": "in-plane rotation range"})
    rotate_p: float = field(default=0.5, metadata={"doc": "probability of a rotation"})
    log_every_steps: int = field(default=100, metadata={"doc": "history interval"})
    eval_every_steps: int = field(default=1000, metadata={"doc": "held-out evaluation interval"})
    checkpoint_every_steps: int = field(default=200, metadata={"doc": "last.pt interval"})
    keep_every_steps: int = field(default=2000, metadata={"doc": "step_N.pt interval; 0 = off"})
    train_limit: int = field(default=0, metadata={"doc": "use at most this many photos "
                                                         "(0 = all; tests)"})
    augment: AugmentSettings = field(default_factory=AugmentSettings)

    def validate(self) -> None:
        if self.steps < 1 or self.batch_size < 2:
            raise ValueError("steps must be positive and batch_size at least 2")
        if self.input_size_px < 32 or self.input_size_px % 8:
            raise ValueError("input_size_px must be a multiple of 8, at least 32")
        if not 0.0 <= self.render_share < 1.0:
            raise ValueError("render_share must be in [0, 1)")
        if self.render_share > 0 and not self.renders:
            raise ValueError("render_share > 0 needs renders = the render cache (.npz)")


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> StudentConfig:
    from dms.settings import load_settings
    from dms.train.distill import read_config_table

    return load_settings(StudentConfig, read_config_table(path, overrides), str(path))


# ----------------------------------------------------------------------------- data


@dataclass(slots=True)
class FaceSet:
    """Photos in memory with their boxes, labels and (real faces) teacher landmarks."""

    images: list[np.ndarray]
    boxes: np.ndarray  # (N, 4)
    M: np.ndarray  # (N, 3, 3)
    landmarks: np.ndarray | None  # (N, 68, 2) image pixels, or None (renders)

    def __len__(self) -> int:
        return len(self.images)


def _resolve_model(name: str) -> Path:
    from dms.vision.registry import resolve_model

    path, _ = resolve_model(name, task="head_pose")
    return Path(path)


def real_faces(cfg: StudentConfig, split: str, limit: int = 0) -> FaceSet | None:
    """The ``split`` photos of the ensemble labels (built first when missing), or None when
    none passes the filters."""
    from dms.train.datasets import load_image
    from dms.train.ensemble import build_ensemble_labels, read_ensemble_labels

    path = build_ensemble_labels(cfg.images, cfg.landmark_labels, cfg.labels,
                                 model=_resolve_model(cfg.teacher_model), progress=False)
    rows = [r for r in read_ensemble_labels(path)
            if r["split"] == split and r["tddfa_spread_deg"] <= cfg.max_tddfa_spread_deg]
    if limit:
        rows = rows[:limit]
    if not rows:
        return None
    return FaceSet(
        [load_image(r["image"]) for r in rows],
        np.array([r["box"] for r in rows], np.float64),
        np.array([r["M"] for r in rows], np.float64).reshape(-1, 3, 3),
        np.array([r["landmarks68"] for r in rows], np.float64),
    )


def render_faces(path: str | Path, *, count: int = 0, photos: int = 0, cfg: StudentConfig,
                 seed: int = 0, split: str = "train") -> FaceSet:
    """A render cache (built first when missing: ``photos`` near-frontal ``split`` photos
    lifted and rendered ``count`` times) as a face set with exact labels."""
    from dms.train import realfaces
    from dms.train.rendered import RenderSettings, build_cache

    path = Path(path)
    if count:
        labels = realfaces.build_labels(cfg.images, cfg.landmark_labels, progress=False)
        rows = realfaces.select(realfaces.read_labels(labels), split=split, min_conf=0.9,
                                max_teacher_deg=(12.0, 12.0, 12.0), max_spread_deg=6.0)
        chosen = tuple(r["image"] for r in rows)[: photos or None]
        build_cache(path, count, photos=chosen, settings=RenderSettings(cutout_px=200),
                    seed=seed, mirror=False, face_crops=True, progress=False)
    if not path.is_file():
        raise InputError(f"{path}: no such render cache")
    with np.load(path) as z:
        images, boxes, gt = z["images"], z["boxes"], z["gt"]
    return FaceSet(list(images), boxes.astype(np.float64), gt.astype(np.float64), None)


def sample_warp(box: np.ndarray, size: int, rng: np.random.Generator | None,
                cfg: StudentConfig) -> tuple[np.ndarray, float]:
    """The image -> crop affine of the crop rule, jittered when ``rng`` is given, and the
    in-plane rotation in degrees (counter-clockwise in the image)."""
    A: np.ndarray = np.vstack([crop_transform([float(v) for v in box], size, TDDFA_RULE),
                               np.array([[0.0, 0.0, 1.0]])])
    if rng is None:
        return A[:2], 0.0
    phi = float(rng.uniform(-cfg.rotate_max_deg, cfg.rotate_max_deg)) \
        if rng.random() < cfg.rotate_p else 0.0
    s = float(rng.uniform(1.0 - cfg.scale_jitter, 1.0 + cfg.scale_jitter))
    c = (size - 1) / 2.0
    J = np.vstack([cv2.getRotationMatrix2D((c, c), phi, 1.0 / s), [0.0, 0.0, 1.0]])
    J[:2, 2] += rng.uniform(-cfg.shift_jitter, cfg.shift_jitter, size=2) * size
    return (J @ A)[:2], phi


def make_sample(faces: FaceSet, i: int, cfg: StudentConfig, rng: np.random.Generator | None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(crop BGR uint8, label M, landmarks (68, 2) in crop fractions or None) of face ``i``;
    augmented when ``rng`` is given."""
    size = cfg.input_size_px
    A, phi = sample_warp(faces.boxes[i], size, rng, cfg)
    crop = cv2.warpAffine(faces.images[i], A, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT)
    M = faces.M[i]
    if phi:
        c, s = math.cos(math.radians(phi)), math.sin(math.radians(phi))
        M = M @ np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])  # M Rz(-phi)
    lm = None
    if faces.landmarks is not None:
        lm = (faces.landmarks[i] @ A[:, :2].T + A[:, 2]) / size
    if rng is None:
        return crop, M, lm
    if rng.random() < cfg.augment.flip_p:
        crop = np.ascontiguousarray(crop[:, ::-1])
        M = mirror_rotation(M)
        if lm is not None:
            lm = lm[FLIP_68] * np.array([-1.0, 1.0]) + np.array([1.0, 0.0])
    a = cfg.augment
    for p, fn in ((a.color_p, aug.color), (a.side_light_p, aug.side_light),
                  (a.ir_p, aug.ir_like), (a.occlusion_p, aug.occlude),
                  (a.blur_p, aug.blur), (a.noise_p, aug.noise)):
        if rng.random() < p:
            crop = fn(crop, rng)
    return crop, M, lm


def make_batch(samples: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]
               ) -> dict[str, np.ndarray]:
    x = np.concatenate([to_nchw_imagenet(c) for c, _, _ in samples])
    M = np.stack([m for _, m, _ in samples]).astype(np.float32)
    has = np.array([lm is not None for _, _, lm in samples])
    lm = np.stack([lm if lm is not None else np.zeros((68, 2)) for _, _, lm in samples])
    return {"x": x, "M": M, "lm": lm.astype(np.float32), "has_lm": has}


class BatchMaker:
    """Augmented batches on a background thread (bounded queue), so that the warps and the
    photometric augmentation run while the network computes. Deterministic per (seed, step)."""

    def __init__(self, real: FaceSet, renders: FaceSet | None, cfg: StudentConfig,
                 start_step: int) -> None:
        self.real, self.renders, self.cfg = real, renders, cfg
        self.q: queue.Queue[dict[str, np.ndarray]] = queue.Queue(maxsize=3)
        self.step = start_step
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="batches", daemon=True)
        self.thread.start()

    def batch(self, step: int) -> dict[str, np.ndarray]:
        cfg = self.cfg
        rng = np.random.default_rng((cfg.seed, step))
        n_r = int(round(cfg.batch_size * cfg.render_share)) if self.renders is not None else 0
        samples = [make_sample(self.real, int(i), cfg, rng)
                   for i in rng.integers(0, len(self.real), cfg.batch_size - n_r)]
        if n_r and self.renders is not None:
            samples += [make_sample(self.renders, int(i), cfg, rng)
                        for i in rng.integers(0, len(self.renders), n_r)]
        return make_batch(samples)

    def _run(self) -> None:
        cv2.setNumThreads(1)
        step = self.step
        while not self.stop.is_set():
            b = self.batch(step)
            while not self.stop.is_set():
                try:
                    self.q.put(b, timeout=0.5)
                    break
                except queue.Full:
                    continue
            step += 1

    def next(self) -> dict[str, np.ndarray]:
        return self.q.get()

    def close(self) -> None:
        self.stop.set()


# ----------------------------------------------------------------------------- models


def build_model(cfg: StudentConfig) -> Any:
    """The student network: ``forward(x) -> (M (N,3,3), landmarks (N,68,2) crop pixels)``
    first, further outputs after (see :func:`student_outputs`)."""
    if cfg.backbone == "tddfa_mb05":
        from dms.train.tddfa_net import build_pose_net

        d = Path(cfg.tddfa_dir)
        return build_pose_net(d / "mb05_120x120.pth", d / "param_mean_std_62d_120x120.pkl")
    return LandmarkPoseNet(cfg.backbone, cfg.input_size_px)


def _landmark_pose_net() -> Any:
    import torch
    from torch import nn

    from dms.train.backbones import build_backbone
    from dms.train.heads import rotation_from_6d

    class _Net(nn.Module):
        """A backbone with a 6D rotation head and a 68-landmark head (crop pixels)."""

        crop_rule = "tddfa"
        output_names = ("rotation_matrix", "landmarks")

        def __init__(self, backbone: str, size_px: int) -> None:
            super().__init__()
            self.backbone_name = backbone
            self.size_px = size_px
            self.backbone = build_backbone(backbone)
            width = self.backbone.out_features
            if not isinstance(width, int):
                raise TypeError(f"backbone {backbone!r}: out_features is not an int")
            self.head6d = nn.Linear(width, 6)
            nn.init.normal_(self.head6d.weight, std=1e-3)
            with torch.no_grad():
                self.head6d.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]))
            self.head_lm = nn.Linear(width, 136)
            nn.init.normal_(self.head_lm.weight, std=1e-3)
            nn.init.zeros_(self.head_lm.bias)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            f = self.backbone(x)
            M = rotation_from_6d(self.head6d(f))
            lm = (self.head_lm(f).view(-1, 68, 2) + 0.5) * self.size_px
            return M, lm

    return _Net


def LandmarkPoseNet(backbone: str, size_px: int) -> Any:  # noqa: N802 - a class factory
    return _landmark_pose_net()(backbone, size_px)


def student_outputs(out: Any) -> tuple[Any, Any]:
    """(rotation, landmarks in crop pixels) of a student's forward output."""
    return out[0], out[-1]


# ----------------------------------------------------------------------------- evaluation


def _euler_errors(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    e = np.array([euler_from_aflw_matrix(m) for m in pred]) - np.array(
        [euler_from_aflw_matrix(m) for m in ref])
    return np.abs((e + 180.0) % 360.0 - 180.0)


def evaluate(model: Any, faces: FaceSet, cfg: StudentConfig, flip: bool = False
             ) -> dict[str, Any]:
    """MAE (deg, AFLW Euler) of the student against the set's labels, overall and per |yaw|
    bin of the label; ``flip`` also reads the mirrored crop and averages (as the runtime)."""
    import torch

    from dms.geometry import mean_rotation

    model.eval()
    preds = []
    with torch.no_grad():
        for lo in range(0, len(faces), 64):
            samples = [make_sample(faces, i, cfg, None)
                       for i in range(lo, min(len(faces), lo + 64))]
            x = torch.from_numpy(make_batch(samples)["x"])
            M = student_outputs(model(x))[0].double().numpy()
            if flip:
                Mf = student_outputs(model(x.flip(3)))[0].double().numpy()
                M = np.stack([mean_rotation(np.stack([a, mirror_rotation(b)]))
                              for a, b in zip(M, Mf, strict=True)])
            preds.append(M)
    model.train()
    pred = np.concatenate(preds)
    err = _euler_errors(pred, faces.M)
    yaw = np.abs(np.array([euler_from_aflw_matrix(m)[1] for m in faces.M]))
    out: dict[str, Any] = {"faces": len(faces),
                           "pitch_yaw_roll_mae": [round(float(v), 3) for v in err.mean(0)],
                           "mean_mae": round(float(err.mean()), 3), "bins": {}}
    for lo, hi in ((0, 30), (30, 60), (60, 99)):
        m = (yaw >= lo) & (yaw < hi)
        if m.any():
            out["bins"][f"{lo}-{hi}"] = [int(m.sum()), round(float(err[m].mean()), 3)]
    return out


# ----------------------------------------------------------------------------- the loop


def _lr_factor(step: int, cfg: StudentConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - cfg.warmup_steps) / span)))


def _save(obj: Any, path: Path) -> None:
    import torch

    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, str(tmp))
    os.replace(tmp, path)


def load_student(path: str | Path) -> tuple[Any, StudentConfig]:
    """(model in eval mode, config) of a ``last.pt`` / ``model.pt`` / ``step_N.pt``."""
    import torch

    from dms.settings import load_settings

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint")
    try:
        ck = torch.load(str(path), map_location="cpu", weights_only=False)
        cfg = load_settings(StudentConfig, ck["config"], str(path))
        model = build_model(cfg)
        model.load_state_dict(ck["model"])
    except (KeyError, RuntimeError, OSError, EOFError) as exc:
        raise InputError(f"{path}: not a dms student checkpoint ({exc})") from None
    return model.eval(), cfg


def _config_dict(cfg: StudentConfig) -> dict[str, Any]:
    return asdict(cfg)


def train_student(cfg: StudentConfig) -> dict[str, Any]:
    """Run (or resume) a student run; returns the run log (also ``run.json``)."""
    import json

    import torch

    from dms.train.losses import geodesic_angle

    cfg.validate()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    real = real_faces(cfg, "train", cfg.train_limit)
    if real is None:
        raise InputError(f"{cfg.labels}: no train faces pass the filters")
    val = real_faces(cfg, "val", cfg.train_limit // 5 if cfg.train_limit else 0)
    renders = None
    if cfg.render_share > 0:
        renders = render_faces(cfg.renders, count=cfg.render_count, photos=cfg.render_photos,
                               cfg=cfg, seed=cfg.seed)
    val_renders = None
    if cfg.val_renders and Path(cfg.val_renders).is_file():
        val_renders = render_faces(cfg.val_renders, cfg=cfg)
    log.info("student %s: %d train faces, %d val, %d renders", cfg.backbone, len(real),
             len(val) if val is not None else 0, len(renders) if renders is not None else 0)

    model = build_model(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step = 0
    run_log: dict[str, Any] = {"config": _config_dict(cfg), "history": [], "evaluations": [],
                               "train_faces": len(real),
                               "val_faces": len(val) if val is not None else 0}
    last = out / "last.pt"
    if last.is_file():
        ck = torch.load(str(last), map_location="cpu", weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        step = int(ck["step"])
        run_log = ck.get("run_log", run_log)
        run_log["config"] = _config_dict(cfg)
        log.info("resuming %s at step %d", last, step)
    if step == 0:
        run_log["evaluations"].append(_evaluations(model, val, val_renders, cfg, 0))

    def save_last() -> None:
        _save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
               "config": _config_dict(cfg), "run_log": run_log}, last)
        (out / "run.json").write_text(json.dumps(run_log, indent=1))

    batches = BatchMaker(real, renders, cfg, step)
    t0, seen, acc = time.monotonic(), 0, {"rot_deg": 0.0, "lm": 0.0}
    try:
        while step < cfg.steps:
            for g in opt.param_groups:
                g["lr"] = cfg.lr * _lr_factor(step, cfg)
            b = batches.next()
            M, lm = student_outputs(model(torch.from_numpy(b["x"])))
            target = torch.from_numpy(b["M"])
            rot = geodesic_angle(M, target).mean()
            loss = rot
            has = torch.from_numpy(b["has_lm"])
            lm_err = torch.zeros(())
            if cfg.landmark_weight > 0 and bool(has.any()):
                d = lm[has] / cfg.input_size_px - torch.from_numpy(b["lm"])[has]
                lm_err = torch.sqrt((d ** 2).sum(-1) + 1e-8).mean()
                loss = loss + cfg.landmark_weight * lm_err
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            seen += 1
            acc["rot_deg"] += math.degrees(float(rot.detach()))
            acc["lm"] += float(lm_err.detach())
            if step % cfg.log_every_steps == 0 or step == cfg.steps:
                dt = time.monotonic() - t0
                entry = {"step": step, "rot_deg": round(acc["rot_deg"] / seen, 3),
                         "lm": round(acc["lm"] / seen, 4), "s_per_step": round(dt / seen, 3),
                         "lr": opt.param_groups[0]["lr"]}
                run_log["history"].append(entry)
                log.info("step %d: %s", step, entry)
                t0, seen, acc = time.monotonic(), 0, {"rot_deg": 0.0, "lm": 0.0}
            if step % cfg.eval_every_steps == 0 or step == cfg.steps:
                run_log["evaluations"].append(_evaluations(model, val, val_renders, cfg, step))
                log.info("held out at %d: %s", step, run_log["evaluations"][-1])
            if step % cfg.checkpoint_every_steps == 0 or step == cfg.steps:
                save_last()
            if cfg.keep_every_steps and step % cfg.keep_every_steps == 0:
                _save({"model": model.state_dict(), "config": _config_dict(cfg),
                       "step": step}, out / f"step_{step}.pt")
    finally:
        batches.close()
    _save({"model": model.state_dict(), "config": _config_dict(cfg), "step": step},
          out / "model.pt")
    run_log["export"] = export_student(model, out / "model.onnx", cfg)
    (out / "run.json").write_text(json.dumps(run_log, indent=1))
    return run_log


def _evaluations(model: Any, val: FaceSet | None, val_renders: FaceSet | None,
                 cfg: StudentConfig, step: int) -> dict[str, Any]:
    ev: dict[str, Any] = {"step": step}
    if val is not None:
        ev["val_vs_ensemble"] = evaluate(model, val, cfg)
    if val_renders is not None:
        ev["val_renders"] = evaluate(model, val_renders, cfg)
    return ev


def export_student(model: Any, path: Path, cfg: StudentConfig) -> dict[str, Any]:
    """``model.onnx`` and ``model.fp16.onnx`` (float16 storage), each checked against
    PyTorch on real crops."""
    from dms.train.export import check_onnx, export_onnx, store_fp16

    model = model.eval()
    export_onnx(model, path, cfg.input_size_px)
    c32 = check_onnx(path, model)
    half = path.with_name(path.stem + ".fp16.onnx")
    keep = ("param_", "fc_param", "head6d") if cfg.backbone == "tddfa_mb05" else ("head6d",)
    store_fp16(path, half, keep_fp32=keep)
    c16 = check_onnx(half, model)
    return {"fp32": asdict(c32), "fp16_storage": asdict(c16)}
