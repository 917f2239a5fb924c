"""The head-pose training package: maths, augmentation labels, readers, the whole recipe end to
end on rendered faces, and the ONNX export against PyTorch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="training needs the [train] extra (PyTorch): pip install -e '.[train]'"
)

import cv2  # noqa: E402

from dms.errors import DmsError, InputError  # noqa: E402
from dms.geometry import (  # noqa: E402
    aflw_matrix_from_euler,
    euler_from_aflw_matrix,
    geodesic_deg,
    rotation_from_6d,
)
from dms.train import augment as aug  # noqa: E402
from dms.train.backbones import (  # noqa: E402
    BACKBONES,
    EXPECTED_PARAMS_M,
    build_backbone,
    count_parameters,
)
from dms.train.datasets import (  # noqa: E402
    SyntheticHeads,
    box_for_crop_image,
    read_aflw,
    read_pseudo,
    write_pseudo,
)
from dms.train.heads import PoseNet  # noqa: E402
from dms.train.heads import rotation_from_6d as rotation_from_6d_torch  # noqa: E402
from dms.train.losses import distillation_loss, geodesic_angle, geodesic_loss  # noqa: E402
from dms.vision.crop import TEST_MARGINS, crop_square, face_crop, to_nchw_imagenet  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _random_rotations(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack(
        [aflw_matrix_from_euler(*rng.uniform([-60, -90, -60], [60, 90, 60])) for _ in range(n)]
    )


# ----------------------------------------------------------------------------- model pieces


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_backbone_builds_forwards_and_has_the_papers_size(name):
    model = build_backbone(name).eval()
    with torch.no_grad():
        y = model(torch.zeros(1, 3, 64, 64))
    assert y.shape == (1, model.out_features)
    params_m = count_parameters(model) / 1e6
    assert EXPECTED_PARAMS_M[name] / 1.2 < params_m < EXPECTED_PARAMS_M[name] * 1.2
    if name == "resnet18":
        assert 10.5 < params_m < 12.0  # ~11 M, as published


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(InputError, match="resnet18"):
        build_backbone("resnet19")


def test_6d_head_gives_proper_rotations_matching_numpy():
    v = torch.randn(32, 6, dtype=torch.float64)
    M = rotation_from_6d_torch(v)
    eye = torch.eye(3, dtype=torch.float64).expand(32, 3, 3)
    assert torch.allclose(M.transpose(1, 2) @ M, eye, atol=1e-10)
    assert torch.allclose(torch.linalg.det(M), torch.ones(32, dtype=torch.float64), atol=1e-10)
    np.testing.assert_allclose(M.numpy(), rotation_from_6d(v.numpy()), atol=1e-12)
    net = PoseNet("mobilenet_v3_small").eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 3, 3)
    assert torch.allclose(torch.linalg.det(out), torch.ones(2), atol=1e-5)


def test_geodesic_loss_is_zero_for_equal_and_the_angle_otherwise():
    A = torch.from_numpy(_random_rotations(16, seed=1))
    B = torch.from_numpy(_random_rotations(16, seed=2))
    assert float(geodesic_loss(A, A)) < 1e-5
    got = np.rad2deg(geodesic_angle(A, B).numpy())
    want = [geodesic_deg(a, b) for a, b in zip(A.numpy(), B.numpy(), strict=True)]
    np.testing.assert_allclose(got, want, atol=1e-4)
    # exactly 30 deg apart about any axis
    C = A @ torch.from_numpy(aflw_matrix_from_euler(0, 0, 30))
    np.testing.assert_allclose(np.rad2deg(geodesic_angle(A, C).numpy()), 30.0, atol=1e-4)
    # finite gradient at equality (acos-based losses give NaN there)
    p = A.clone().requires_grad_(True)
    geodesic_loss(p, A).backward()
    assert torch.isfinite(p.grad).all()


def test_distillation_loss_blends_ground_truth_and_teacher_by_confidence():
    gt = torch.from_numpy(_random_rotations(2, seed=3))
    teacher = gt @ torch.from_numpy(aflw_matrix_from_euler(0, 20, 0))
    pred = gt.clone()
    no_gt = torch.tensor([False, False])
    # teacher only: loss = angle to the teacher = 20 deg
    loss = distillation_loss(pred, gt, no_gt, teacher, torch.tensor([1.0, 1.0]))
    assert np.rad2deg(loss.item()) == pytest.approx(20.0, abs=1e-3)
    # ground truth only (no teacher confidence): prediction equals gt -> 0
    loss = distillation_loss(pred, gt, ~no_gt, teacher, torch.tensor([0.0, 0.0]), gt_weight=0.5)
    assert float(loss) < 1e-5
    # both, half each: (0.5 * 0 + 0.5 * 20) / 1
    loss = distillation_loss(pred, gt, ~no_gt, teacher, torch.tensor([1.0, 1.0]), gt_weight=0.5)
    assert np.rad2deg(loss.item()) == pytest.approx(10.0, abs=1e-3)


# ----------------------------------------------------------------------------- augmentation


def test_flip_negates_yaw_and_roll_and_keeps_pitch():
    crop = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    for pitch, yaw, roll in [(10, 30, -15), (-25, -70, 40), (0, 85, 5)]:
        M = aflw_matrix_from_euler(pitch, yaw, roll)
        flipped, M2, none = aug.hflip(crop, M, None)
        np.testing.assert_array_equal(flipped, crop[:, ::-1])
        assert none is None
        np.testing.assert_allclose(euler_from_aflw_matrix(M2), (pitch, -yaw, -roll), atol=1e-9)


def _face_corr(a: np.ndarray, b: np.ndarray) -> float:
    ga = cv2.cvtColor(a, cv2.COLOR_BGR2GRAY).astype(float)
    gb = cv2.cvtColor(b, cv2.COLOR_BGR2GRAY).astype(float)
    c = slice(a.shape[0] // 4, 3 * a.shape[0] // 4)
    return float(np.corrcoef(ga[c, c].ravel(), gb[c, c].ravel())[0, 1])


def test_in_plane_rotation_label_matches_a_rendered_head():
    """Rotating the image of a frontal head by +25 deg (OpenCV: counter-clockwise) must look
    like the head rendered at the label the augmentation gives, not at the opposite roll."""
    heads = SyntheticHeads(canvas_px=96)
    frontal = aflw_matrix_from_euler(0, 0, 0)
    img, _ = heads.render_pose(frontal, np.random.default_rng(5))
    rotated, M = aug.rotate_in_plane(img, 25.0, frontal)
    pitch, yaw, roll = euler_from_aflw_matrix(M)
    assert (pitch, yaw) == pytest.approx((0.0, 0.0), abs=1e-9)
    assert abs(roll) == pytest.approx(25.0, abs=1e-9)
    same, _ = heads.render_pose(M, np.random.default_rng(5))
    opposite, _ = heads.render_pose(aflw_matrix_from_euler(0, 0, -roll), np.random.default_rng(5))
    assert _face_corr(rotated, same) > _face_corr(rotated, opposite) + 0.1


def test_photometric_augmentations_keep_shape_and_type():
    rng = np.random.default_rng(1)
    crop = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)
    for fn in (aug.blur, aug.color, aug.side_light, aug.ir_like, aug.noise, aug.occlude):
        out = fn(crop, rng)
        assert out.shape == crop.shape and out.dtype == np.uint8
    gray = aug.ir_like(crop, rng)
    assert np.array_equal(gray[:, :, 0], gray[:, :, 1])
    out, gt, teacher = aug.augment(crop, np.eye(3), None, aug.AugmentSettings(flip_p=1.0), rng)
    assert teacher is None and euler_from_aflw_matrix(gt)[1] == pytest.approx(0.0, abs=1e-9)


# ----------------------------------------------------------------------------- data


def test_crop_image_box_round_trips_through_face_crop():
    box = box_for_crop_image(120, 120)
    cx, cy, side = crop_square(box, TEST_MARGINS)
    assert (cx, cy, side) == pytest.approx((60.0, 60.0, 120.0))


def test_synthetic_heads_are_deterministic_and_labelled():
    heads = SyntheticHeads(canvas_px=64, seed=3)
    a, b = heads.render(7), heads.render(7)
    np.testing.assert_array_equal(a.image, b.image)
    x1, y1, x2, y2 = a.box
    assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64
    assert np.allclose(a.gt.T @ a.gt, np.eye(3))


def test_aflw_reader_gives_boxes_and_labels(aflw_dir):
    recs = read_aflw(aflw_dir)
    assert len(recs) == 61  # 3 of the 64 have an angle beyond 99 deg
    for r in recs[:5]:
        x1, y1, x2, y2 = r.box
        assert 0 < x1 < x2 < 450 and 0 < y1 < y2 < 450
        assert np.allclose(np.linalg.det(r.gt), 1.0)


def test_readers_name_the_bad_input(tmp_path):
    with pytest.raises(InputError, match="not a directory"):
        read_aflw(tmp_path / "missing")
    bad = tmp_path / "labels.jsonl"
    bad.write_text('{"image": "x.jpg"}\n')
    with pytest.raises(InputError, match="labels.jsonl:1"):
        read_pseudo(bad)


# ----------------------------------------------------------------------------- teachers


def test_landmark_teacher_recovers_the_rotation_and_the_ensemble_mean():
    from dms.train.teachers import EnsembleTeacher, LandmarkTeacher

    canonical = np.random.default_rng(0).normal(size=(40, 3))

    def landmarks_at(M):
        def fn(image, box):
            cam = canonical @ np.asarray(M).T.T  # R = M.T turns head points into the camera
            return cam * np.array([50.0, -50.0, -50.0]) + np.array([100.0, 80.0, 0.0]), 0.9

        return fn

    M1 = aflw_matrix_from_euler(-10, 35, 5)
    M2 = aflw_matrix_from_euler(-10, 45, 5)
    img = np.zeros((4, 4, 3), np.uint8)
    t1 = LandmarkTeacher(landmarks_at(M1), canonical, name="a")
    out = t1.predict([img], [(0, 0, 4, 4)])
    np.testing.assert_allclose(out.rotations[0], M1, atol=1e-9)
    assert out.confidence[0] == pytest.approx(0.9)
    ens = EnsembleTeacher([t1, LandmarkTeacher(landmarks_at(M2), canonical, name="b")])
    both = ens.predict([img], [(0, 0, 4, 4)])
    assert euler_from_aflw_matrix(both.rotations[0])[1] == pytest.approx(40.0, abs=0.5)
    assert both.confidence[0] < out.confidence[0]


# ----------------------------------------------------------------------------- end to end


def _write_config(path: Path, out_dir: Path, steps: int, extra_sources: str = "") -> Path:
    path.write_text(
        f"""
out_dir = "{out_dir}"
backbone = "resnet18"
input_size_px = 48
steps = {steps}
batch_size = 2
warmup_steps = 1
log_every_steps = 1
checkpoint_every_steps = 1
bins = 66
progress = false
[augment]
ir_p = 0.5
[[sources]]
kind = "synthetic"
count = 12
{extra_sources}
"""
    )
    return path


def test_recipe_end_to_end_teacher_pseudolabels_student_resume_and_onnx(tmp_path):
    import onnxruntime as ort

    from dms.train.distill import load_checkpoint, load_config, train
    from dms.train.export import check_crops
    from dms.train.teachers import EnsembleTeacher, FlipAveragedTeacher, OnnxRotationTeacher
    from dms.train.teachers import pseudolabel as run_pseudolabel

    # 1. a teacher trained on rendered heads, exported to the runtime contract
    cfg = load_config(_write_config(tmp_path / "teacher.toml", tmp_path / "teacher", 2))
    log = train(cfg)
    assert log["finished"] and log["export"]["max_angle_diff_deg"] < 1e-3
    teacher_onnx = tmp_path / "teacher" / "model.onnx"

    # 2. pseudo-labels for a folder of unlabelled faces
    faces = tmp_path / "faces"
    faces.mkdir()
    heads = SyntheticHeads(canvas_px=64, seed=9)
    boxes = {}
    for i in range(3):
        rec = heads.render(i)
        cv2.imwrite(str(faces / f"f{i}.png"), rec.image)
        boxes[f"f{i}.png"] = list(rec.box)
    (faces / "boxes.json").write_text(json.dumps(boxes))
    from dms.train.datasets import read_folder

    teacher = EnsembleTeacher(
        [OnnxRotationTeacher(teacher_onnx), FlipAveragedTeacher(OnnxRotationTeacher(teacher_onnx))]
    )
    labelled = run_pseudolabel(teacher, read_folder(faces), progress=False)
    write_pseudo(tmp_path / "pseudo.jsonl", labelled)
    back = read_pseudo(tmp_path / "pseudo.jsonl")
    assert len(back) == 3 and all(0.0 < r.teacher_conf <= 1.0 for r in back)
    np.testing.assert_allclose(back[0].teacher, labelled[0].teacher, atol=1e-12)

    # 3. the student on rendered heads + pseudo-labels; stopped after 2 steps, resumed to 3
    pseudo = f'[[sources]]\nkind = "pseudo"\npath = "{tmp_path / "pseudo.jsonl"}"\n'
    pseudo += f'[[eval_sources]]\nkind = "folder"\npath = "{faces}"\n'
    cfg_path = _write_config(tmp_path / "student.toml", tmp_path / "student", 3, pseudo)
    first = train(load_config(cfg_path, {"steps": 2}))
    assert first["step"] == 2
    log = train(load_config(cfg_path))
    assert log["step"] == 3 and [h["step"] for h in log["history"]] == [1, 2, 3]
    saved = json.loads((tmp_path / "student" / "run.json").read_text())
    assert saved["config"]["backbone"] == "resnet18" and saved["finished"]
    assert all(np.isfinite(h["loss"]) for h in saved["history"])

    # a later round starts from this student's weights
    from dms.train.backbones import load_matching_weights

    copied, total = load_matching_weights(
        PoseNet("resnet18", bins=66), tmp_path / "student/model.pt"
    )
    assert copied == total

    # 4. the exported ONNX gives the same angles as PyTorch on real crops
    model, meta = load_checkpoint(tmp_path / "student" / "model.pt")
    sess = ort.InferenceSession(str(tmp_path / "student" / "model.onnx"))
    inp, out = sess.get_inputs()[0], sess.get_outputs()[0]
    assert inp.name == "input" and list(inp.shape) == [1, 3, 48, 48]
    assert out.name == "rotation_matrix" and out.shape[1:] == [3, 3]
    x = check_crops(48, 4)
    for i in range(len(x)):
        (m_onnx,) = sess.run(["rotation_matrix"], {"input": x[i : i + 1]})
        with torch.no_grad():
            m_torch = model(torch.from_numpy(x[i : i + 1])).numpy()
        np.testing.assert_allclose(
            euler_from_aflw_matrix(m_onnx[0]), euler_from_aflw_matrix(m_torch[0]), atol=1e-3
        )


def test_export_check_on_real_faces_and_int8_variant(tmp_path, aflw_dir):
    """AFLW2000 faces are read here for the export check only (never for training)."""
    from dms.train.datasets import load_image
    from dms.train.export import check_onnx, compare_onnx, export_onnx, to_fp16, to_int8

    torch.manual_seed(0)
    model = PoseNet("mobilenet_v3_small").eval()
    # make the output depend on the face: a random head instead of the identity start
    torch.nn.init.normal_(model.head6d.weight, std=0.05)
    path = export_onnx(model, tmp_path / "m.onnx", 64)
    recs = read_aflw(aflw_dir, limit=6)
    x = np.concatenate(
        [to_nchw_imagenet(face_crop(load_image(r.image), r.box, 64)[0]) for r in recs]
    )
    check = check_onnx(path, model, x)
    assert check.faces == 6 and check.max_abs_diff < 1e-4 and check.max_angle_diff_deg < 0.01
    p16 = to_fp16(path, tmp_path / "m.fp16.onnx")
    assert compare_onnx(path, p16, x) < 1.0
    p8 = to_int8(path, tmp_path / "m.int8.onnx", x)
    assert compare_onnx(path, p8, x) < 15.0  # an untrained net; the CLI reports the real figure


def test_config_errors_name_the_key(tmp_path):
    from dms.train.distill import load_config

    p = tmp_path / "bad.toml"
    p.write_text('backbone = "resnet18"\nlearning_rate = 0.1\n[[sources]]\nkind = "synthetic"\n')
    with pytest.raises(DmsError, match="learning_rate"):
        load_config(p)
    p.write_text('[[sources]]\nkind = "aflw"\n')
    with pytest.raises(DmsError, match="needs a path"):
        load_config(p)
    with pytest.raises(InputError, match="no such config"):
        load_config(tmp_path / "nope.toml")


def test_cli_help_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, dms.cli; dms.cli.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ----------------------------------------------------------------------------- rendered heads


def test_rendered_heads_labels_agree_with_the_landmark_teacher_and_boxes_follow_aflw():
    """A render's exact label, box and crop are what the runtime's own FaceMesh + Procrustes
    reads back on a moderate pose; the AFLW-style box loses the far ear lobe when turned."""
    from dms.paths import models_dir
    from dms.train.rendered import RenderedHeads, RenderSettings, crop_of
    from dms.vision.landmark_pose import LandmarkHeadPose

    teacher = LandmarkHeadPose.from_files(models_dir() / "face_landmark.onnx")
    heads = RenderedHeads(
        ("astronaut",), mirror=False, settings=RenderSettings(box_jitter=0.0), teacher=teacher
    )
    for pose in ((-10.0, 30.0, 10.0), (5.0, -25.0, -15.0)):
        face = heads.render(3, pose_deg=pose)
        np.testing.assert_allclose(euler_from_aflw_matrix(face.gt), pose, atol=1e-9)
        assert face.teacher_conf > 0.5
        got = euler_from_aflw_matrix(face.teacher)
        assert max(abs(a - b) for a, b in zip(got, pose, strict=True)) < 10.0, (got, pose)
        assert crop_of(face, 64).shape == (64, 64, 3)
    # deterministic in (seed, index)
    a, b = heads.render(5), heads.render(5)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_allclose(a.gt, b.gt)
    # turning the head hides the far ear and brow: the box narrows, but the chin (on the
    # outline) still bounds it below, as in AFLW's annotations
    renderer = heads._renderer(0, 0)
    frontal = heads.aflw_box(renderer, 0, aflw_matrix_from_euler(0, 0, 0).T)
    turned = heads.aflw_box(renderer, 0, aflw_matrix_from_euler(0, 85, 0).T)
    width, height = frontal[2] - frontal[0], frontal[3] - frontal[1]
    assert turned[2] - turned[0] < 0.85 * width
    assert abs(turned[3] - frontal[3]) < 0.1 * height


def test_rendered_recipe_end_to_end_cache_train_eval_onnx(tmp_path):
    """The CPU recipe of docs/training.md in miniature: render a cache (with the landmark
    teacher's soft targets), train a MobileNetV3-small, evaluate held-out renders, export."""
    import onnxruntime as ort

    from dms.train.distill import load_config, train
    from dms.train.rendered import read_cache

    cfg_path = tmp_path / "rendered.toml"
    cfg_path.write_text(
        f"""
out_dir = "{tmp_path / "run"}"
backbone = "mobilenet_v3_small"
input_size_px = 32
steps = 3
batch_size = 4
warmup_steps = 1
bins = 66
gt_weight = 0.9
log_every_steps = 1
progress = false
[[sources]]
kind = "rendered"
path = "{tmp_path / "train.npz"}"
count = 6
photos = ["astronaut"]
mirror = false
teacher = true
min_conf = 0.5
[[eval_sources]]
kind = "rendered"
path = "{tmp_path / "val.npz"}"
count = 3
photos = ["astronaut"]
mirror = false
seed = 7
"""
    )
    log = train(load_config(cfg_path))
    assert log["finished"] and log["step"] == 3
    assert all(np.isfinite(h["loss"]) for h in log["history"])
    ev = log["eval"][f"rendered:{tmp_path / 'val.npz'}"]
    assert ev["faces"] == 3 and np.isfinite(ev["mean_mae_deg"])
    assert log["export"]["max_angle_diff_deg"] < 1e-3
    recs = read_cache(tmp_path / "train.npz")
    assert len(recs) == 6 and recs[0].image.shape == (96, 96, 3)
    assert any(r.teacher is not None for r in recs)  # soft targets where FaceMesh is sure
    assert all(r.teacher is None for r in read_cache(tmp_path / "train.npz", min_conf=1.01))
    # a second run reuses the cache (same key) instead of rendering again
    mtime = (tmp_path / "train.npz").stat().st_mtime_ns
    train(load_config(cfg_path, {"out_dir": str(tmp_path / "run2"), "steps": 1}))
    assert (tmp_path / "train.npz").stat().st_mtime_ns == mtime
    sess = ort.InferenceSession(str(tmp_path / "run" / "model.onnx"))
    assert list(sess.get_inputs()[0].shape) == [1, 3, 32, 32]
    assert sess.get_outputs()[0].name == "rotation_matrix"


def test_rendered_source_needs_a_cache_file(tmp_path):
    from dms.train.distill import load_config

    p = tmp_path / "bad.toml"
    p.write_text('[[sources]]\nkind = "rendered"\npath = "renders"\n')
    with pytest.raises(DmsError, match="npz"):
        load_config(p)
