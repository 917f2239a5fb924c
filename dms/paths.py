"""Where dms finds its files.

Read at call time, never at import: ``DMS_MODELS_DIR`` overrides the shipped ``models/`` folder
that sits beside the ``dms`` package in a checkout (``Path(dms.__file__).parents[1] / "models"``).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from dms.errors import InputError


def models_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The folder holding the embedded models and ``manifest.toml``.

    ``environ`` defaults to ``os.environ``; pass a mapping to resolve without touching it.
    """
    env = os.environ if environ is None else environ
    override = env.get("DMS_MODELS_DIR")
    if override:
        return Path(override)
    import dms

    return Path(dms.__file__).resolve().parents[1] / "models"


# Public-domain photos shipped inside registry packages: (module, path inside the package).
BUILTIN_PHOTOS: dict[str, tuple[str, str]] = {
    "astronaut": ("skimage", "data/astronaut.png"),
    "grace_hopper": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
}


def photo_path(name_or_path: str | Path) -> Path:
    """The file of a built-in photo name (``astronaut``, ``grace_hopper``) or a path."""
    key = str(name_or_path)
    if key in BUILTIN_PHOTOS:
        module, rel = BUILTIN_PHOTOS[key]
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise InputError(
                f"photo {key!r}: the Python package {module!r} that ships it is not installed "
                f"(pip install {'scikit-image' if module == 'skimage' else module}), or pass "
                "--photo PATH"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / rel
        if not path.is_file():
            raise InputError(f"photo {key!r}: {path} not found in the installed {module}")
        return path
    path = Path(key)
    if not path.is_file():
        known = ", ".join(BUILTIN_PHOTOS)
        raise InputError(f"{path}: photo not found (give a file or one of: {known})")
    return path


def load_photo(name_or_path: str | Path) -> np.ndarray:
    """A BGR uint8 image of a built-in photo name or a file path."""
    import cv2

    path = photo_path(name_or_path)
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise InputError(f"{path}: not an image OpenCV can read")
    return image
