"""The model manifest (``models/manifest.toml``): what models dms knows, where they come
from, their licence and sha256; resolution of ``--detector``/``--pose-model`` values; and the
``dms models pull``/``verify`` operations.

A model is named either by its manifest ``name`` or by a path to an ONNX file. Shipped
(embedded) models live in ``models/``; downloaded ones in the user model directory
(``$DMS_USER_MODELS_DIR``, else ``$XDG_CACHE_HOME/dms/models``, else ``~/.cache/dms/models``).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dms.errors import ModelError
from dms.settings import read_toml

log = logging.getLogger(__name__)

TASKS = ("face_detector", "face_landmarks", "head_pose", "mesh", "eye_landmarks")


@dataclass(frozen=True, slots=True)
class ModelEntry:
    name: str
    task: str
    file: str
    url: str
    sha256: str
    licence: str
    input: str = ""
    embedded: bool = False
    description: str = ""
    family: str | None = None
    archive_member: str | None = None
    output: str = ""  # head-pose output format override, see dms.vision.headpose


def models_dir() -> Path:
    from dms.paths import models_dir as _models_dir

    return _models_dir()


def user_models_dir(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if env.get("DMS_USER_MODELS_DIR"):
        return Path(env["DMS_USER_MODELS_DIR"])
    base = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "dms" / "models"


def load_manifest(path: Path | None = None) -> list[ModelEntry]:
    path = path or models_dir() / "manifest.toml"
    data = read_toml(path, "model manifest", ModelError)
    entries = []
    known = set(ModelEntry.__slots__)  # type: ignore[attr-defined]
    for i, raw in enumerate(data.get("model", [])):
        where = f"{path}: [[model]] #{i + 1}"
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ModelError(f"{where}: unknown key {unknown[0]!r}")
        try:
            entry = ModelEntry(**raw)
        except TypeError as exc:
            raise ModelError(f"{where}: {exc}") from None
        if entry.task not in TASKS:
            raise ModelError(f"{where} ({entry.name}): task {entry.task!r} not in {TASKS}")
        entries.append(entry)
    names = [e.name for e in entries]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ModelError(f"{path}: duplicate model name {sorted(dupes)[0]!r}")
    return entries


def find_entry(name: str, entries: list[ModelEntry] | None = None) -> ModelEntry:
    entries = load_manifest() if entries is None else entries
    for e in entries:
        if e.name == name:
            return e
    raise ModelError(
        f"unknown model {name!r}: not a file and not in the manifest "
        f"(known: {', '.join(e.name for e in entries)})"
    )


def entry_path(entry: ModelEntry) -> Path | None:
    """Where the entry's file is on this machine, or None if it is not here."""
    for base in (models_dir(), user_models_dir()):
        p = base / entry.file
        if p.is_file():
            return p
    return None


def _is_path_like(spec: str) -> bool:
    return os.sep in spec or spec.endswith(".onnx") or Path(spec).exists()


def resolve_model(spec: str, task: str, also: tuple[str, ...] = ()
                  ) -> tuple[Path, ModelEntry | None]:
    """The file for a ``--detector``/``--pose-model`` value: a manifest name (of ``task``, or
    one of the tasks in ``also``) or a path."""
    if _is_path_like(spec):
        p = Path(spec)
        if not p.is_file():
            raise ModelError(f"{spec}: model file not found")
        return p, None
    entry = find_entry(spec)
    if entry.task != task and entry.task not in also:
        raise ModelError(f"model {spec!r} is a {entry.task}, not a {task}")
    found = entry_path(entry)
    if found is None:
        raise ModelError(
            f"model {spec!r} is not on this machine: run `dms models pull {spec}` "
            f"(downloads {entry.url})"
        )
    return found, entry


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class VerifyResult:
    name: str
    status: str  # "ok" | "missing" | "mismatch" | "unpinned"
    path: Path | None
    detail: str = ""


def verify(entries: list[ModelEntry] | None = None) -> list[VerifyResult]:
    """Check every manifest model that is on this machine against its sha256."""
    entries = load_manifest() if entries is None else entries
    out = []
    for e in entries:
        p = entry_path(e)
        if p is None:
            out.append(VerifyResult(e.name, "missing", None, "not downloaded"))
            continue
        digest = sha256_file(p)
        if not e.sha256:
            out.append(VerifyResult(e.name, "unpinned", p, f"sha256 {digest} (manifest has none)"))
        elif digest != e.sha256:
            out.append(
                VerifyResult(e.name, "mismatch", p, f"sha256 {digest}, manifest {e.sha256}")
            )
        else:
            out.append(VerifyResult(e.name, "ok", p))
    return out


Opener = Callable[[str, float], Any]


def _default_opener(url: str, timeout_s: float) -> Any:
    req = urllib.request.Request(url, headers={"User-Agent": "dms-model-pull"})
    return urllib.request.urlopen(req, timeout=timeout_s)  # noqa: S310 - https URLs from manifest


def pull(
    entry: ModelEntry,
    dest_dir: Path | None = None,
    *,
    opener: Opener = _default_opener,
    timeout_s: float = 60.0,
) -> Path:
    """Download ``entry`` from its URL, check its sha256, and store it in ``dest_dir``.

    Nothing is written under the final name unless the digest matches (when the manifest
    pins one). Raises ModelError with the URL and the reason on any failure.
    """
    dest_dir = dest_dir or user_models_dir()
    if entry.embedded:
        raise ModelError(
            f"model {entry.name!r} is embedded (shipped in models/, converted from {entry.url}); "
            "rebuild it with `python models/build_embedded.py` instead of pulling it"
        )
    if not entry.url.startswith("https://"):
        raise ModelError(f"model {entry.name!r}: no https download URL in the manifest")
    try:
        with opener(entry.url, timeout_s) as resp:
            data = resp.read()
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ModelError(f"model {entry.name!r}: cannot download {entry.url}: {reason}") from None
    if entry.archive_member:
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                data = zf.read(entry.archive_member)
        except (zipfile.BadZipFile, KeyError) as exc:
            raise ModelError(
                f"model {entry.name!r}: {entry.url} has no usable {entry.archive_member} ({exc})"
            ) from None
    digest = hashlib.sha256(data).hexdigest()
    if entry.sha256 and digest != entry.sha256:
        raise ModelError(
            f"model {entry.name!r}: sha256 of the download from {entry.url} is {digest}, "
            f"the manifest pins {entry.sha256}; not installed"
        )
    if not entry.sha256:
        log.warning("model %s has no pinned sha256; downloaded sha256 is %s", entry.name, digest)
    target = dest_dir / entry.file
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False, suffix=".part") as tmp:
        tmp.write(data)
        tmp_name = tmp.name
    shutil.move(tmp_name, target)
    return target
