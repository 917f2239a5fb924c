import hashlib
import io
import urllib.error
import zipfile

import pytest

from dms.cli import main
from dms.errors import ModelError
from dms.vision.registry import find_entry, load_manifest, pull, resolve_model, verify

PAYLOAD = b"\x08\x07fake-onnx-bytes" * 100
SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def manifest(tmp_path, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    (models / "local.onnx").write_bytes(PAYLOAD)
    (models / "manifest.toml").write_text(
        f"""
[[model]]
name = "local"
task = "head_pose"
file = "local.onnx"
url = "https://example.invalid/local.onnx"
sha256 = "{SHA}"
licence = "MIT"
embedded = true

[[model]]
name = "remote"
task = "head_pose"
file = "remote.onnx"
url = "https://example.invalid/remote.zip"
archive_member = "inner/remote.onnx"
sha256 = "{SHA}"
licence = "MIT"
"""
    )
    monkeypatch.setenv("DMS_MODELS_DIR", str(models))
    monkeypatch.setenv("DMS_USER_MODELS_DIR", str(tmp_path / "user"))
    return models


class _Resp(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def _zip(member: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(member, data)
    return buf.getvalue()


def test_resolve_by_name_and_path(manifest):
    path, entry = resolve_model("local", "head_pose")
    assert path == manifest / "local.onnx" and entry.licence == "MIT"
    path2, entry2 = resolve_model(str(manifest / "local.onnx"), "head_pose")
    assert path2 == manifest / "local.onnx" and entry2 is None
    with pytest.raises(ModelError, match="is a head_pose, not a face_detector"):
        resolve_model("local", "face_detector")
    with pytest.raises(ModelError, match="run `dms models pull remote`"):
        resolve_model("remote", "head_pose")
    with pytest.raises(ModelError, match="unknown model 'nope'"):
        resolve_model("nope", "head_pose")


def test_pull_checks_sha_and_extracts_archive_member(manifest, tmp_path):
    entry = find_entry("remote")
    target = pull(entry, opener=lambda url, t: _Resp(_zip("inner/remote.onnx", PAYLOAD)))
    assert target == tmp_path / "user" / "remote.onnx" and target.read_bytes() == PAYLOAD
    assert {r.name: r.status for r in verify()} == {"local": "ok", "remote": "ok"}


def test_pull_refuses_a_mismatching_download(manifest, tmp_path):
    entry = find_entry("remote")
    bad = _zip("inner/remote.onnx", b"tampered")
    with pytest.raises(ModelError, match="sha256 of the download .* not installed"):
        pull(entry, opener=lambda url, t: _Resp(bad))
    assert not (tmp_path / "user" / "remote.onnx").exists()


def test_pull_offline_is_a_clear_error(manifest):
    def offline(url, timeout):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    with pytest.raises(ModelError, match="cannot download https://example.invalid/remote.zip"):
        pull(find_entry("remote"), opener=offline)


def test_verify_reports_a_modified_file(manifest, capsys):
    (manifest / "local.onnx").write_bytes(PAYLOAD + b"x")
    assert {r.name: r.status for r in verify()}["local"] == "mismatch"
    assert main(["models", "verify"]) == 1
    assert "mismatch" in capsys.readouterr().out


def test_bad_manifest_is_named(tmp_path, monkeypatch):
    (tmp_path / "manifest.toml").write_text('[[model]]\nname = "x"\ntask = "teleport"\n')
    with pytest.raises(ModelError, match="manifest.toml"):
        load_manifest(tmp_path / "manifest.toml")
