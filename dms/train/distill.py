"""The distillation training loop: config, data mixing, checkpoints, resumption, run log.

A run is described by a TOML file loaded into :class:`TrainConfig` (unknown keys fail; see
docs/training.md). Each step draws a batch from the configured sources (weighted), computes
:func:`dms.train.losses.distillation_loss` (ground truth blended with the teachers' soft
targets), and steps AdamW with a warm-up + cosine learning rate.

Files in ``out_dir``: ``last.pt`` (model, optimiser, scheduler, step, config - resumption
continues from it), ``model.pt`` (final weights + metadata), ``run.json`` (config, versions,
a history of training metrics, evaluation results; rewritten at every log interval) and, with
``export_onnx``, ``model.onnx`` checked against PyTorch.

Evaluation sets (``eval_sources``) are reported only: the checkpoint kept is the last one,
never one chosen on a test set.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np

from dms.errors import InputError
from dms.settings import load_settings, settings_to_dict
from dms.train.augment import AugmentSettings

log = logging.getLogger(__name__)

SourceKind = Literal[
    "aflw", "300wlp", "biwi", "folder", "pseudo", "synthetic", "rendered", "realfaces"
]


@dataclass(frozen=True, slots=True)
class SourceConfig:
    """One ``[[sources]]`` / ``[[eval_sources]]`` entry."""

    kind: SourceKind = field(metadata={"doc": "reader: aflw, 300wlp, biwi, folder, pseudo, ..."})
    path: str = field(default="", metadata={"doc": "dataset directory or pseudo-label file"})
    weight: float = field(default=1.0, metadata={"doc": "share of each batch (relative)"})
    limit: int = field(default=0, metadata={"doc": "use at most this many faces; 0 = all"})
    count: int = field(default=2000, metadata={"doc": "synthetic: faces per pass"})
    textures: str = field(
        default="", metadata={"doc": "synthetic: folder of frontal faces (+ boxes.json)"}
    )
    min_conf: float = field(
        default=0.0, metadata={"doc": "pseudo / rendered: drop teacher labels below this"}
    )
    photos: tuple[str, ...] = field(
        default=("astronaut", "grace_hopper"),
        metadata={"doc": "rendered: public-domain photos to lift (names or paths)"},
    )
    mirror: bool = field(default=True, metadata={"doc": "rendered: also lift each photo mirrored"})
    teacher: bool = field(
        default=False,
        metadata={"doc": "rendered: add the landmark teacher's soft target (FaceMesh presence)"},
    )
    seed: int = field(default=-1, metadata={"doc": "rendered: render seed; -1 = the run's seed"})
    images: str = field(
        default="",
        metadata={"doc": "realfaces / rendered with photos_from: folder of real face crops "
                         "that the landmark teacher pseudo-labels (dms.train.realfaces)"},
    )
    labels: str = field(
        default="",
        metadata={"doc": "realfaces / rendered: the pseudo-label file of `images` (JSON lines, "
                         "built on first use)"},
    )
    split: str = field(
        default="train", metadata={"doc": "realfaces / rendered: 'train', 'val' or 'all' photos"}
    )
    max_teacher_deg: tuple[float, float, float] = field(
        default=(90.0, 90.0, 90.0),
        metadata={"doc": "realfaces: keep faces whose teacher |pitch|, |yaw|, |roll| are within"},
    )
    max_spread_deg: float = field(
        default=180.0,
        metadata={"doc": "realfaces / rendered photos: keep faces whose fit on the photo and on "
                         "its mirror image differ by at most this"},
    )
    photo_max_deg: float = field(
        default=0.0,
        metadata={"doc": "rendered: lift the real photos of `labels` whose teacher angles are "
                         "all within this (near-frontal); 0 = use `photos`"},
    )
    photo_limit: int = field(default=0, metadata={"doc": "rendered: lift at most this many"})

    def validate(self) -> None:
        if self.kind not in ("synthetic", "rendered") and not self.path:
            raise ValueError(f"source kind {self.kind!r} needs a path")
        if self.kind == "rendered" and not self.path.endswith(".npz"):
            raise ValueError("a rendered source needs path = the cache file (.npz) to use/build")
        if self.kind == "realfaces" and not self.images:
            raise ValueError("a realfaces source needs images = the folder of face crops")
        if self.photo_max_deg and not (self.labels and self.images):
            raise ValueError("photo_max_deg needs labels and images (the real photos)")
        if self.split not in ("train", "val", "all"):
            raise ValueError(f"split must be 'train', 'val' or 'all', got {self.split!r}")
        if self.weight <= 0:
            raise ValueError("weight must be positive")


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """A training run (the top level of the TOML file)."""

    out_dir: str = field(default="runs/headpose", metadata={"doc": "run directory"})
    backbone: str = field(default="resnet18", metadata={"doc": "see dms.train.backbones"})
    input_size_px: int = field(default=224, metadata={"doc": "square crop side S"})
    bins: int = field(default=0, metadata={"doc": "auxiliary bins head (66 = Hopenet); 0 = off"})
    bins_weight: float = field(default=0.1, metadata={"doc": "weight of the bins loss"})
    init_weights: str = field(default="", metadata={"doc": "state_dict to start from, optional"})
    steps: int = field(default=20000, metadata={"doc": "optimiser steps in all"})
    batch_size: int = field(default=64, metadata={"doc": "faces per step"})
    lr: float = field(default=3e-4, metadata={"doc": "peak AdamW learning rate"})
    weight_decay: float = field(default=1e-4, metadata={"doc": "AdamW weight decay"})
    warmup_steps: int = field(default=500, metadata={"doc": "linear warm-up steps"})
    gt_weight: float = field(
        default=0.5, metadata={"doc": "share of ground truth vs teacher where both exist"}
    )
    margin_range: tuple[float, float] = field(
        default=(0.2, 0.4), metadata={"doc": "random side crop margins at training time"}
    )
    seed: int = field(default=0, metadata={"doc": "random seed"})
    num_workers: int = field(default=0, metadata={"doc": "DataLoader worker processes"})
    threads: int = field(default=1, metadata={"doc": "torch CPU threads"})
    device: str = field(default="cpu", metadata={"doc": "'cpu', 'cuda' or 'cuda:N'"})
    log_every_steps: int = field(default=50, metadata={"doc": "history / run.json interval"})
    checkpoint_every_steps: int = field(default=500, metadata={"doc": "last.pt interval"})
    keep_every_steps: int = field(
        default=0,
        metadata={"doc": "also keep step_N.pt (weights) every N steps, for reports; 0 = off"},
    )
    resume: bool = field(default=True, metadata={"doc": "continue from out_dir/last.pt"})
    export_onnx: bool = field(default=True, metadata={"doc": "write and check model.onnx"})
    progress: bool = field(default=True, metadata={"doc": "tqdm progress bar"})
    sources: tuple[SourceConfig, ...] = field(default=(), metadata={"doc": "training data"})
    eval_sources: tuple[SourceConfig, ...] = field(
        default=(), metadata={"doc": "evaluation data (reported only, never used to choose)"}
    )
    augment: AugmentSettings = field(default_factory=AugmentSettings)

    def validate(self) -> None:
        if not self.sources:
            raise ValueError("at least one [[sources]] entry is needed")
        if self.input_size_px < 32 or self.input_size_px % 16:
            raise ValueError("input_size_px must be a multiple of 16, at least 32")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be positive")
        if self.backbone == "facemesh" and self.input_size_px % 64:
            raise ValueError("the facemesh backbone needs input_size_px a multiple of 64 "
                             "(128 or 192, FaceMesh's own)")
        if not 0.0 <= self.gt_weight <= 1.0:
            raise ValueError("gt_weight must be in [0, 1]")


def read_config_table(path: str | Path, overrides: dict[str, Any] | None = None
                      ) -> dict[str, Any]:
    """A training recipe's TOML as a table, ``overrides`` on top (every trainer's config)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such config file") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: not valid TOML ({exc})") from None
    data.update(overrides or {})
    return data


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    return load_settings(TrainConfig, read_config_table(path, overrides), str(path))


# ----------------------------------------------------------------------------- data


def source_records(src: SourceConfig, cfg_seed: int = 0, size_px: int = 112,
                   evaluation: bool = False) -> Any:
    """Records (or a SyntheticHeads generator) for one source.

    Rendered heads (:mod:`dms.train.rendered`) are rendered once into the ``path`` cache, with
    a cut-out of 1.5 x the crop side (at least 96 px) around each face.

    Synthetic heads render on a canvas of 1.6 x the crop side: about one rendered pixel per
    crop pixel, since the crop covers roughly 0.65 of the canvas."""
    from dms.train import datasets as ds

    if src.kind in ("aflw", "300wlp"):
        return ds.read_aflw(src.path, limit=src.limit)
    if src.kind == "biwi":
        return ds.read_biwi(src.path, limit=src.limit)
    if src.kind == "folder":
        return ds.read_folder(src.path, limit=src.limit)
    if src.kind == "pseudo":
        return ds.read_pseudo(src.path, min_conf=src.min_conf, limit=src.limit)
    if src.kind == "realfaces":
        from dms.train import realfaces

        labels = realfaces.build_labels(src.images, src.labels or src.path)
        rows = realfaces.select(realfaces.read_labels(labels), split=src.split,
                                min_conf=src.min_conf, max_teacher_deg=src.max_teacher_deg,
                                max_spread_deg=src.max_spread_deg)
        if src.limit:
            rows = rows[: src.limit]
        if not rows:
            raise InputError(f"{labels}: no faces pass the source's filters")
        # as an evaluation set the teacher is the reference (agreement on held-out real faces)
        return realfaces.records(rows, source=f"realfaces:{Path(src.images).name}",
                                 teacher_as_gt=evaluation)
    if src.kind == "rendered":
        from dms.train.rendered import RenderSettings, build_cache, read_cache

        photos = src.photos
        if src.photo_max_deg:
            from dms.train import realfaces

            labels = realfaces.build_labels(src.images, src.labels)
            lim = (src.photo_max_deg,) * 3
            rows = realfaces.select(realfaces.read_labels(labels), split=src.split,
                                    min_conf=0.9, max_teacher_deg=lim,
                                    max_spread_deg=src.max_spread_deg)
            photos = tuple(r["image"] for r in rows)[: src.photo_limit or None]
            log.info("rendered %s: lifting %d near-frontal real photos", src.path, len(photos))
        settings = RenderSettings(cutout_px=max(96, round(1.5 * size_px)))
        path = build_cache(
            src.path,
            src.count,
            photos=photos,
            settings=settings,
            seed=cfg_seed if src.seed < 0 else src.seed,
            teacher=src.teacher,
            mirror=src.mirror,
            face_crops=bool(src.photo_max_deg),
        )
        return read_cache(path, limit=src.limit, min_conf=src.min_conf)
    textures = None
    if src.textures:
        textures = [(ds.load_image(r.image), r.box) for r in ds.read_folder(src.textures)]
    return ds.SyntheticHeads(textures, canvas_px=max(64, int(1.6 * size_px)), seed=cfg_seed)


def build_dataset(cfg: TrainConfig, sources: tuple[SourceConfig, ...], train: bool) -> Any:
    import torch

    from dms.train.datasets import FaceDataset, SyntheticHeads

    parts, weights = [], []
    for src in sources:
        seed = cfg.seed if train else cfg.seed + 1_000_003
        recs = source_records(src, seed, cfg.input_size_px, evaluation=not train)
        count = src.count if isinstance(recs, SyntheticHeads) else 0
        parts.append(
            FaceDataset(recs, cfg.input_size_px, train, cfg.augment, cfg.margin_range, count)
        )
        weights.append(src.weight)
        log.info("source %s %s: %d faces", src.kind, src.path, len(parts[-1]))
    # FaceDataset is map-style by duck typing (__len__, __getitem__), not a Dataset subclass
    data: torch.utils.data.ConcatDataset[Any] = torch.utils.data.ConcatDataset(
        cast("list[torch.utils.data.Dataset[Any]]", parts)
    )
    # per-sample weights so each source gets its share of every batch, whatever its size
    per_sample = torch.cat(
        [torch.full((len(p),), w / max(len(p), 1)) for p, w in zip(parts, weights, strict=True)]
    )
    return data, per_sample


# ----------------------------------------------------------------------------- evaluation


def evaluate(model: Any, loader: Any, device: str = "cpu") -> dict[str, float]:
    """MAE of pitch / yaw / roll (deg, AFLW Euler of M) and mean geodesic error (deg)."""
    import torch

    from dms.train.heads import euler_from_aflw_matrix
    from dms.train.losses import geodesic_angle

    model.eval()
    errs, geo = [], []
    with torch.no_grad():
        for batch in loader:
            mask = batch["gt_mask"]
            if not mask.any():
                continue
            M = model(batch["image"].to(device)).cpu()[mask]
            gt = batch["gt"][mask]
            d = euler_from_aflw_matrix(M.double()) - euler_from_aflw_matrix(gt.double())
            errs.append(torch.abs((d + 180.0) % 360.0 - 180.0))
            geo.append(torch.rad2deg(geodesic_angle(M.double(), gt.double())))
    if not errs:
        return {}
    e = torch.cat(errs)
    mae = e.mean(dim=0).tolist()
    return {
        "faces": int(e.shape[0]),
        "pitch_mae_deg": mae[0],
        "yaw_mae_deg": mae[1],
        "roll_mae_deg": mae[2],
        "mean_mae_deg": float(np.mean(mae)),
        "geodesic_mean_deg": float(torch.cat(geo).mean()),
    }


# ----------------------------------------------------------------------------- checkpoints


def _atomic_save(obj: Any, path: Path) -> None:
    import torch

    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, str(tmp))
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """(PoseNet in eval mode, metadata) from ``last.pt`` or ``model.pt``."""
    import torch

    from dms.train.heads import PoseNet

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint")
    try:
        ck = torch.load(str(path), map_location="cpu", weights_only=False)
        meta = ck["meta"]
        model = PoseNet(meta["backbone"], bins=meta.get("bins", 0))
        model.load_state_dict(ck["model"])
    except (KeyError, RuntimeError, OSError, EOFError) as exc:
        raise InputError(f"{path}: not a dms head-pose checkpoint ({exc})") from None
    return model.eval(), meta


def _lr_factor(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - cfg.warmup_steps) / span)))


# ----------------------------------------------------------------------------- the loop


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) a training run; returns the final run log (also in run.json)."""
    import torch
    from tqdm import tqdm

    from dms.train.heads import PoseNet
    from dms.train.losses import bins_loss, distillation_loss, geodesic_angle

    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = cfg.device
    torch.manual_seed(cfg.seed)

    model = PoseNet(cfg.backbone, bins=cfg.bins).to(device)
    if cfg.init_weights:
        from dms.train.backbones import load_matching_weights

        load_matching_weights(model, cfg.init_weights)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, cfg))
    meta = {
        "backbone": cfg.backbone,
        "bins": cfg.bins,
        "input_size_px": cfg.input_size_px,
        "output": "rotation_matrix M = Rz(roll) Ry(yaw) Rx(pitch) (dms.geometry)",
        "crop": "dms.vision.crop.face_crop, test margins 0.4/0.4/0.4/0.12",
    }
    run_log: dict[str, Any] = {
        "config": settings_to_dict(cfg),
        "meta": meta,
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "history": [],
        "eval": {},
        "finished": False,
    }
    step = 0
    last = out / "last.pt"
    if cfg.resume and last.is_file():
        ck = torch.load(str(last), map_location=device, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        step = int(ck["step"])
        run_log["history"] = ck.get("history", [])
        log.info("resumed %s at step %d", last, step)
        torch.manual_seed(cfg.seed + step)  # a fresh, reproducible data order from here

    def save_last() -> None:
        _atomic_save(
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "step": step,
                "meta": meta,
                "config": settings_to_dict(cfg),
                "history": run_log["history"],
            },
            last,
        )

    def write_log() -> None:
        tmp = out / "run.json.tmp"
        tmp.write_text(json.dumps(run_log, indent=2))
        os.replace(tmp, out / "run.json")

    if step < cfg.steps:
        data, per_sample = build_dataset(cfg, cfg.sources, train=True)
        sampler = torch.utils.data.WeightedRandomSampler(
            per_sample, num_samples=(cfg.steps - step) * cfg.batch_size, replacement=True
        )
        loader = torch.utils.data.DataLoader(
            data,
            batch_size=cfg.batch_size,
            sampler=sampler,
            num_workers=cfg.num_workers,
            drop_last=True,
            persistent_workers=cfg.num_workers > 0,
        )
        model.train()
        acc: dict[str, float] = {"loss": 0.0, "gt_deg": 0.0, "n_gt": 0.0, "n": 0.0}
        t0 = time.monotonic()
        bar = tqdm(total=cfg.steps, initial=step, desc="train", disable=not cfg.progress)
        for batch in loader:
            x = batch["image"].to(device, non_blocking=True)
            gt, mask = batch["gt"].to(device), batch["gt_mask"].to(device)
            teacher, conf = batch["teacher"].to(device), batch["teacher_conf"].to(device)
            M, logits = model.forward_train(x)
            loss = distillation_loss(M, gt, mask, teacher, conf, cfg.gt_weight)
            if logits is not None:
                target = torch.where(mask[:, None, None], gt, teacher)
                w = torch.where(mask, torch.ones_like(conf), conf)
                loss = loss + cfg.bins_weight * bins_loss(logits, target, w)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            with torch.no_grad():
                acc["loss"] += float(loss)
                acc["n"] += 1
                if mask.any():
                    acc["gt_deg"] += float(torch.rad2deg(geodesic_angle(M[mask], gt[mask])).sum())
                    acc["n_gt"] += float(mask.sum())
            bar.update(1)
            if step % cfg.log_every_steps == 0 or step == cfg.steps:
                row = {
                    "step": step,
                    "loss": acc["loss"] / max(acc["n"], 1),
                    "train_gt_geodesic_deg": acc["gt_deg"] / acc["n_gt"] if acc["n_gt"] else None,
                    "lr": sched.get_last_lr()[0],
                    "elapsed_s": time.monotonic() - t0,
                }
                run_log["history"].append(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}")
                acc = dict.fromkeys(acc, 0.0)
                write_log()
            if step % cfg.checkpoint_every_steps == 0 or step == cfg.steps:
                save_last()
            if cfg.keep_every_steps and step % cfg.keep_every_steps == 0:
                _atomic_save(
                    {"model": model.state_dict(), "meta": meta, "step": step},
                    out / f"step_{step}.pt",
                )
            if step >= cfg.steps:
                break
        bar.close()

    model.eval()
    _atomic_save({"model": model.state_dict(), "meta": meta, "step": step}, out / "model.pt")
    for src in cfg.eval_sources:
        data, _ = build_dataset(cfg, (src,), train=False)
        loader = torch.utils.data.DataLoader(data, batch_size=cfg.batch_size)
        res = evaluate(model, loader, device)
        run_log["eval"][f"{src.kind}:{src.path}"] = res
        log.info("eval %s %s: %s", src.kind, src.path, res)
    if cfg.export_onnx:
        from dms.train.export import check_onnx, export_onnx

        onnx_path = export_onnx(model.cpu(), out / "model.onnx", cfg.input_size_px)
        run_log["export"] = dataclasses.asdict(check_onnx(onnx_path, model))
    run_log["finished"] = True
    run_log["step"] = step
    write_log()
    return run_log
