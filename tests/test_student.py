"""The face-pretrained student: FaceMesh's ONNX converted to PyTorch, its pose readout at
step 0, the mirror test, the export against PyTorch, and the real-faces recipe end to end on
a tiny set (real-face pseudo-labels + lifted photos rendered turned)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="training needs the [train] extra (PyTorch): pip install -e '.[train]'"
)
pytest.importorskip("onnx", reason="the converter reads the ONNX graph with the onnx package")

from dms.geometry import euler_from_aflw_matrix  # noqa: E402
from dms.paths import models_dir  # noqa: E402
from dms.types import FaceBox  # noqa: E402
from dms.vision.crop import face_crop, to_nchw_imagenet  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "models" / "recipes" / "facemesh_student_cpu.toml"


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def student():  # type: ignore[no-untyped-def]
    from dms.train.heads import PoseNet

    return PoseNet("facemesh").eval()


@pytest.fixture(scope="module")
def face_and_teacher(astronaut):  # type: ignore[no-untyped-def]
    """The astronaut photo, her AFLW-style box from FaceMesh, and the landmark teacher's pose."""
    from dms.train.realfaces import aflw_box_from_landmarks
    from dms.vision.landmark_pose import LandmarkHeadPose

    teacher = LandmarkHeadPose.from_files(models_dir() / "face_landmark.onnx")
    pose, lm = teacher.estimate_with_landmarks(astronaut, FaceBox(180, 57, 271, 177, 1.0))
    return astronaut, aflw_box_from_landmarks(lm.points_px), pose


def _angles(model, image: np.ndarray, box, size: int = 192) -> np.ndarray:  # type: ignore[no-untyped-def]
    crop, _ = face_crop(image, box, size)
    with torch.no_grad():
        M = model(torch.from_numpy(to_nchw_imagenet(crop)))[0].double().numpy()
    return np.array(euler_from_aflw_matrix(M))


def test_converted_facemesh_matches_onnxruntime_offline():
    import onnxruntime as ort

    from dms.train.facemesh_net import OnnxGraph

    path = models_dir() / "face_landmark.onnx"
    graph = OnnxGraph(path, ("conv2d_20", "conv2d_30")).eval()
    x = np.random.default_rng(0).random((1, 3, 192, 192), dtype=np.float32)
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        ["conv2d_20", "conv2d_30"], {"input_1": x})
    with torch.no_grad():
        out = graph(torch.from_numpy(x))
    # landmarks in pixels of 192 (measured 6e-5) and the presence logit
    assert np.abs(out["conv2d_20"].numpy() - ref[0]).max() < 1e-3
    assert np.abs(out["conv2d_30"].numpy() - ref[1]).max() < 1e-4
    assert len(graph.steps) == 97  # every node: 45 Conv, 23 PRelu, 20 Add, 6 MaxPool, 3 Pad


def test_converter_refuses_a_file_that_is_not_onnx(tmp_path):
    from dms.errors import InputError
    from dms.train.facemesh_net import OnnxGraph

    bad = tmp_path / "x.onnx"
    bad.write_text("hello")
    with pytest.raises(InputError, match="not an ONNX model"):
        OnnxGraph(bad, ("conv2d_20",))


def test_untrained_student_reads_pose_from_the_landmarks_like_the_teacher(
    student, face_and_teacher
):
    """The 6D head starts as the least-squares pose of the FaceMesh landmarks: before any
    training the student agrees with the landmark teacher within a few degrees (measured
    2.9 / 2.5 / 1.9 deg mean on 150 held-out real faces at 192 px)."""
    image, box, pose = face_and_teacher
    ours = _angles(student, image, box)
    teacher = np.array([pose.pitch_deg, pose.yaw_deg, pose.roll_deg])
    assert np.abs(ours - teacher).max() < 6.0, (ours, teacher)


def test_mirror_negates_yaw_and_roll_and_keeps_pitch(student, astronaut):
    """The mirror test on a turned face: a render of the astronaut at yaw 30, roll 12."""
    from dms.train.rendered import RenderedHeads, RenderSettings

    heads = RenderedHeads(("astronaut",), mirror=False,
                          settings=RenderSettings(cutout_px=288, box_jitter=0.0))
    r = heads.render(0, pose_deg=(-8.0, 30.0, 12.0))
    w = r.image.shape[1]
    x1, y1, x2, y2 = r.box
    a = _angles(student, r.image, r.box)
    b = _angles(student, np.ascontiguousarray(r.image[:, ::-1]), (w - x2, y1, w - x1, y2))
    assert np.sign(a[1]) == -np.sign(b[1]) and abs(a[1]) > 10.0
    assert np.sign(a[2]) == -np.sign(b[2]) and abs(a[2]) > 5.0
    assert abs(a[1] + b[1]) < 4.0 and abs(a[2] + b[2]) < 4.0 and abs(a[0] - b[0]) < 4.0


def test_export_matches_pytorch_and_loads_in_the_runtime(student, tmp_path, face_and_teacher):
    from dms.geometry import aflw_matrix_from_euler, geodesic_deg, mean_rotation
    from dms.train.export import check_crops, check_onnx, export_onnx
    from dms.vision.headpose import (
        PoseModelSettings,
        create_pose_estimator,
        flip_confidence,
        mirrored_matrix,
    )
    from dms.vision.settings import CnnPoseSettings

    path = export_onnx(student, tmp_path / "s.onnx", 192)
    check = check_onnx(path, student, check_crops(192, 4))
    assert check.faces == 4 and check.max_angle_diff_deg < 1e-2
    one_pass = PoseModelSettings(model=str(path), cnn=CnnPoseSettings(flip_average=False))
    est = create_pose_estimator(one_pass)
    image, box, _ = face_and_teacher
    pose = est.estimate(image, FaceBox(*box, 1.0))
    assert np.allclose([pose.pitch_deg, pose.yaw_deg, pose.roll_deg],
                       _angles(student, image, box), atol=1e-2)
    assert pose.confidence == 1.0
    # the default also reads the mirror image: the mean of PyTorch's read of the crop and of
    # the mirrored photo (yaw and roll mirrored back), confidence from their disagreement
    h, w = image.shape[:2]
    x0, y0, x1, y1 = box
    M = aflw_matrix_from_euler(*_angles(student, image, box))
    M_m = mirrored_matrix(aflw_matrix_from_euler(
        *_angles(student, np.ascontiguousarray(image[:, ::-1]), (w - x1, y0, w - x0, y1))))
    both = create_pose_estimator(PoseModelSettings(model=str(path))).estimate(
        image, FaceBox(*box, 1.0))
    want = euler_from_aflw_matrix(mean_rotation(np.stack([M, M_m])))
    assert np.allclose([both.pitch_deg, both.yaw_deg, both.roll_deg], want, atol=0.1)
    assert both.confidence == pytest.approx(flip_confidence(geodesic_deg(M, M_m),
                                                            CnnPoseSettings()), abs=0.02)


def test_facemesh_backbone_needs_a_multiple_of_64(tmp_path):
    from dms.errors import DmsError
    from dms.train.distill import load_config

    cfg = tmp_path / "c.toml"
    cfg.write_text('backbone = "facemesh"\ninput_size_px = 96\n'
                   '[[sources]]\nkind = "synthetic"\n')
    with pytest.raises((DmsError, ValueError), match="multiple of 64"):
        load_config(cfg)


def test_the_committed_recipe_loads_and_keeps_aflw2000_out():
    from dms.train.distill import load_config

    cfg = load_config(RECIPE)
    assert cfg.backbone == "facemesh" and cfg.input_size_px == 192
    paths = [s.path for s in cfg.sources + cfg.eval_sources] + [
        s.images for s in cfg.sources + cfg.eval_sources]
    assert not any("aflw2000" in p for p in paths)
    assert {s.split for s in cfg.sources} == {"train"}
    assert {s.split for s in cfg.eval_sources} == {"val"}


def _tiny_faces(folder: Path, astronaut: np.ndarray) -> None:
    """Five 120 x 120 face crops (the faces-aflw layout) from two public-domain photos."""
    from dms.paths import load_photo

    folder.mkdir()
    photos = [(astronaut, (180, 57, 271, 177)), (load_photo("grace_hopper"), None)]
    if photos[1][1] is None:
        from dms.vision.blazeface import BlazeFaceDetector
        from dms.vision.runtime import create_session

        det = BlazeFaceDetector(create_session(models_dir() / "face_detection_back.onnx"))
        f = max(det.detect(photos[1][0]), key=lambda b: b.area)
        photos[1] = (photos[1][0], (f.x1, f.y1, f.x2, f.y2))
    n = 0
    for img, (x1, y1, x2, y2) in photos:
        for scale, flip in ((1.25, False), (1.35, True), (1.3, False)):
            if n == 5:
                break
            cx, cy, side = (x1 + x2) / 2, (y1 + y2) / 2, scale * max(x2 - x1, y2 - y1)
            crop = img[int(cy - side / 2):int(cy + side / 2), int(cx - side / 2):int(cx + side / 2)]
            crop = cv2.resize(crop, (120, 120))
            cv2.imwrite(str(folder / f"face{n:02d}.jpg"), crop[:, ::-1] if flip else crop)
            n += 1


def test_real_faces_recipe_end_to_end_on_a_tiny_set(tmp_path, astronaut):
    """The committed recipe's sources in miniature: pseudo-label a folder of face crops,
    lift its near-frontal photos and render them turned, train the FaceMesh student, evaluate
    held-out sets, resume, export."""
    from dms.train.distill import load_config, train
    from dms.train.realfaces import read_labels

    faces = tmp_path / "faces"
    _tiny_faces(faces, astronaut)
    labels = tmp_path / "labels.jsonl"
    common = f'images = "{faces}"\nlabels = "{labels}"\nsplit = "all"\nmax_spread_deg = 20.0\n'
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(f"""
out_dir = "{tmp_path / "run"}"
backbone = "facemesh"
input_size_px = 64
steps = 2
batch_size = 4
warmup_steps = 1
gt_weight = 1.0
log_every_steps = 1
progress = false
[[sources]]
kind = "realfaces"
path = "{labels}"
{common}min_conf = 0.5
max_teacher_deg = [40.0, 35.0, 40.0]
[[sources]]
kind = "rendered"
path = "{tmp_path / "train.npz"}"
count = 4
{common}photo_max_deg = 30.0
photo_limit = 2
mirror = false
[[eval_sources]]
kind = "realfaces"
path = "{labels}"
{common}
[[eval_sources]]
kind = "rendered"
path = "{tmp_path / "val.npz"}"
count = 2
seed = 5
{common}photo_max_deg = 30.0
photo_limit = 1
mirror = false
""")
    log = train(load_config(cfg))
    assert log["finished"] and log["step"] == 2
    assert all(np.isfinite(h["loss"]) for h in log["history"])
    rows = read_labels(labels)
    assert len(rows) == 5 and {"box", "teacher", "spread_deg", "split"} <= set(rows[0])
    real = log["eval"][f"realfaces:{labels}"]
    assert real["faces"] == 5 and np.isfinite(real["mean_mae_deg"])
    assert log["eval"][f"rendered:{tmp_path / 'val.npz'}"]["faces"] == 2
    assert log["export"]["max_angle_diff_deg"] < 1e-2
    # resuming a finished run trains nothing more and keeps the caches
    mtime = labels.stat().st_mtime_ns
    again = train(load_config(cfg, {"steps": 3}))
    assert again["step"] == 3 and labels.stat().st_mtime_ns == mtime
    assert json.loads((tmp_path / "run" / "run.json").read_text())["finished"]
