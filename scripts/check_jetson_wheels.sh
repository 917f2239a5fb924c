#!/usr/bin/env bash
# Check that dms's runtime dependency set resolves to binary wheels for a Jetson on JetPack 6
# (aarch64, CPython 3.10), without building anything from source. Downloads into a temp dir.
#   scripts/check_jetson_wheels.sh            exit 0 when every requirement has a wheel
# On the Jetson itself, onnxruntime is replaced by NVIDIA's onnxruntime-gpu wheel and OpenCV
# by JetPack's build (with GStreamer): see README "Jetson".
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
# the requirement strings without environment markers (the target is 3.10: tomli applies)
reqs=$("$python" - <<'PY'
import tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print(" ".join(d.split(";")[0].strip() for d in deps))
PY
)
dest=$(mktemp -d)
trap 'rm -rf "$dest"' EXIT
# shellcheck disable=SC2086
"$python" -m pip download -q --disable-pip-version-check --dest "$dest" \
  --only-binary=:all: --python-version 3.10 --implementation cp --abi cp310 \
  --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64 \
  --platform manylinux_2_28_aarch64 --platform manylinux_2_31_aarch64 \
  --platform manylinux_2_34_aarch64 --platform manylinux_2_35_aarch64 \
  --platform linux_aarch64 --platform any \
  $reqs
echo "aarch64 / CPython 3.10 wheels for the runtime dependencies:"
ls "$dest" | sed 's/^/  /'
n=$(ls "$dest" | grep -c '\.whl$')
echo "ok: $n wheels, no source builds"
