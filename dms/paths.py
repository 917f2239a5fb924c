"""Where dms finds its files.

Read at call time, never at import: ``DMS_MODELS_DIR`` overrides the shipped ``models/`` folder
that sits beside the ``dms`` package in a checkout (``Path(dms.__file__).parents[1] / "models"``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


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
