"""``dms train``: train, export, pseudo-label and evaluate head-pose students.

Needs the ``[train]`` extra (PyTorch); torch is imported inside the commands only.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from dms.errors import InputError

if TYPE_CHECKING:
    from dms.train.teachers import Teacher

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train / export / evaluate a head-pose student")
    sub = p.add_subparsers(dest="train_command", metavar="ACTION", required=True)

    r = sub.add_parser("run", help="run (or resume) a training run from a TOML config")
    r.add_argument("--config", required=True, type=Path, help="training config (TOML)")
    r.add_argument("--out", help="override out_dir")
    r.add_argument("--steps", type=int, help="override steps")
    r.add_argument("--device", help="override device (cpu, cuda)")
    r.set_defaults(func=run_train)

    s = sub.add_parser("student", help="run (or resume) a third-round student recipe "
                       "(ensemble labels, 3DDFA crop; dms.train.student)")
    s.add_argument("--config", required=True, type=Path, help="student recipe (TOML)")
    s.add_argument("--out", help="override out_dir")
    s.add_argument("--steps", type=int, help="override steps")
    s.add_argument("--export", type=Path, metavar="CHECKPOINT",
                   help="only export this checkpoint (step_N.pt / model.pt) next to it")
    s.set_defaults(func=run_student)

    e = sub.add_parser("export", help="export a checkpoint to ONNX and check it")
    e.add_argument("checkpoint", type=Path, help="model.pt or last.pt")
    e.add_argument("--out", required=True, type=Path, help="ONNX file to write")
    e.add_argument("--size", type=int, help="input side S (default: the training size)")
    e.add_argument("--fp16", action="store_true", help="also write FILE.fp16.onnx")
    e.add_argument("--int8", action="store_true", help="also write FILE.int8.onnx")
    e.set_defaults(func=run_export)

    q = sub.add_parser("pseudolabel", help="label face images with a teacher ensemble")
    q.add_argument("--images", required=True, type=Path, help="folder of face images")
    q.add_argument(
        "--teacher", action="append", required=True, type=Path, help="contract ONNX (repeatable)"
    )
    q.add_argument("--flip", action="store_true", help="average each teacher with its mirror")
    q.add_argument("--out", required=True, type=Path, help="JSON-lines file to write")
    q.set_defaults(func=run_pseudolabel)

    v = sub.add_parser("eval", help="evaluate a checkpoint or ONNX on AFLW2000-style data")
    v.add_argument("model", type=Path, help="model.pt / last.pt / contract .onnx")
    v.add_argument("--aflw", required=True, type=Path, help="folder of .jpg + .mat")
    v.set_defaults(func=run_eval)


def run_train(args: argparse.Namespace) -> int:
    from dms.train.distill import load_config, train

    overrides = {}
    if args.out:
        overrides["out_dir"] = args.out
    if args.steps:
        overrides["steps"] = args.steps
    if args.device:
        overrides["device"] = args.device
    result = train(load_config(args.config, overrides))
    print(json.dumps({"eval": result["eval"], "export": result.get("export")}, indent=2))
    return 0


def run_student(args: argparse.Namespace) -> int:
    from dms.train.student import export_student, load_config, load_student, train_student

    if args.export:
        model, cfg = load_student(args.export)
        out = args.export.with_suffix(".onnx")
        print(json.dumps(export_student(model, out, cfg), indent=2))
        return 0
    overrides: dict[str, object] = {}
    if args.out:
        overrides["out_dir"] = args.out
    if args.steps:
        overrides["steps"] = args.steps
    result = train_student(load_config(args.config, overrides))
    print(json.dumps({"evaluations": result["evaluations"][-1:], "export": result["export"]},
                     indent=2))
    return 0


def run_export(args: argparse.Namespace) -> int:
    from dms.train.distill import load_checkpoint
    from dms.train.export import (
        check_crops,
        check_onnx,
        compare_onnx,
        export_onnx,
        to_fp16,
        to_int8,
    )

    model, meta = load_checkpoint(args.checkpoint)
    size = args.size or int(meta["input_size_px"])
    path = export_onnx(model, args.out, size)
    check = check_onnx(path, model)
    print(f"{path}: max |M diff| {check.max_abs_diff:.2e}, max angle diff "
          f"{check.max_angle_diff_deg:.2e} deg on {check.faces} crops")  # fmt: skip
    crops = check_crops(size, 16)
    if args.fp16:
        p16 = to_fp16(path, args.out.with_suffix(".fp16.onnx"))
        print(f"{p16}: max angle diff vs fp32 {compare_onnx(path, p16, crops):.2f} deg")
    if args.int8:
        p8 = to_int8(path, args.out.with_suffix(".int8.onnx"), crops)
        print(f"{p8}: max angle diff vs fp32 {compare_onnx(path, p8, crops):.2f} deg")
    return 0


def run_pseudolabel(args: argparse.Namespace) -> int:
    from dms.train.datasets import read_folder, write_pseudo
    from dms.train.teachers import (
        EnsembleTeacher,
        FlipAveragedTeacher,
        OnnxRotationTeacher,
        pseudolabel,
    )

    teachers: list[Teacher] = [OnnxRotationTeacher(p) for p in args.teacher]
    if args.flip:
        teachers = [FlipAveragedTeacher(t) for t in teachers]
    teacher = teachers[0] if len(teachers) == 1 else EnsembleTeacher(teachers)
    records = pseudolabel(teacher, read_folder(args.images))
    write_pseudo(args.out, records)
    print(f"{args.out}: {len(records)} faces labelled by {teacher.name}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    import numpy as np

    from dms.geometry import euler_from_aflw_matrix
    from dms.train.datasets import load_image, read_aflw

    records = read_aflw(args.aflw)
    teacher: Teacher
    if args.model.suffix == ".onnx":
        from dms.train.teachers import OnnxRotationTeacher

        teacher = OnnxRotationTeacher(args.model)
    elif args.model.suffix == ".pt":
        from dms.train.teachers import TorchTeacher

        teacher = TorchTeacher.from_checkpoint(args.model)
    else:
        raise InputError(f"{args.model}: expected a .pt checkpoint or an .onnx model")
    errs = []
    for rec in records:
        if rec.gt is None:  # read_aflw labels every face
            raise InputError(f"{rec.image}: AFLW record without a ground-truth rotation")
        M = teacher.predict([load_image(rec.image)], [rec.box]).rotations[0]
        d = np.array(euler_from_aflw_matrix(M)) - np.array(euler_from_aflw_matrix(rec.gt))
        errs.append(np.abs((d + 180.0) % 360.0 - 180.0))
    mae = np.mean(errs, axis=0)
    result: dict[str, float] = {"faces": len(errs)}
    for name, v in zip(("pitch", "yaw", "roll"), mae, strict=True):
        result[f"{name}_mae_deg"] = round(float(v), 2)
    result["mean_mae_deg"] = round(float(mae.mean()), 2)
    print(json.dumps(result))
    return 0
