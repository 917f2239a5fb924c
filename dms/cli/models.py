"""``dms models list | pull NAME | verify``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list, download and verify models")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    ls = msub.add_parser("list", help="models in the manifest: defaults, licences, whether "
                         "they are here")
    ls.add_argument("--json", action="store_true", help="one JSON object per model")
    ls.set_defaults(func=run_list)
    pl = msub.add_parser("pull", help="download a model and check its sha256")
    pl.add_argument("name")
    pl.add_argument("--dest", type=Path, help="directory (default: the user model directory)")
    pl.add_argument("--timeout-s", type=float, default=60.0)
    pl.set_defaults(func=run_pull)
    vf = msub.add_parser("verify", help="check the sha256 of every model on this machine")
    vf.set_defaults(func=run_verify)


def default_roles() -> dict[str, str]:
    """Model name -> what it does by default (the ``[vision]`` defaults)."""
    from dms.config import VisionSettings
    from dms.vision.registry import load_manifest

    v = VisionSettings()
    roles = {v.detector.model: "detector", v.pose.model: "head pose"}
    lm = v.pose.landmarks
    if lm.flip_average and lm.mirror_model:
        roles[lm.mirror_model] = "pose mirror"
    if v.eyes.enabled:
        roles[v.eyes.model] = "eyes"
    families = {e.name: e.family for e in load_manifest()}
    if families.get(v.pose.model) == "facemesh":  # landmark pose fits the canonical mesh
        for e in load_manifest():
            if e.task == "mesh":
                roles[e.name] = "pose mesh"
    return roles


def restricted(licence: str) -> bool:
    """The licence limits use (research / non-commercial only)."""
    text = licence.lower().replace("-", " ")
    return "non commercial" in text or "research use only" in text


def run_list(args: argparse.Namespace) -> int:
    from dms.vision.registry import entry_path, load_manifest, models_dir, user_models_dir

    roles = default_roles()
    rows = []
    for e in load_manifest():
        p = entry_path(e)
        if args.json:
            print(json.dumps({"name": e.name, "task": e.task, "embedded": e.embedded,
                              "default": roles.get(e.name), "licence": e.licence,
                              "restricted": restricted(e.licence), "present": p is not None,
                              "path": str(p) if p else None, "url": e.url}))
            continue
        here = ("embedded" if e.embedded else "downloaded") if p else "not downloaded"
        default = f"* {roles[e.name]}" if e.name in roles else ""
        rows.append((e.name, e.task, default, here,
                     ("! " if restricted(e.licence) else "") + e.licence))
    if not args.json:
        import shutil
        import textwrap

        print(_table(("NAME", "TASK", "DEFAULT", "HERE", "LICENCE"), rows) + "\n")
        width = max(60, shutil.get_terminal_size((120, 24)).columns - 1)
        for note in ("* used by default ([vision] settings; a config or --detector / "
                     "--pose-model chooses others: pose mirror = the mirrored pass of flip "
                     "averaging, pose mesh = the mesh the landmark pose is fitted to)",
                     "! licence limits use: research / non-commercial only",
                     f"embedded models: {models_dir()}; downloads (dms models pull NAME): "
                     f"{user_models_dir()}"):
            print(textwrap.fill(note, width, subsequent_indent="  "))
    return 0


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    """Left-aligned columns under a header; the last column wraps to the terminal width."""
    import shutil
    import textwrap

    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    lead = sum(w + 2 for w in widths)
    last = max(30, shutil.get_terminal_size((120, 24)).columns - lead - 1)
    out = []
    for r in [header, tuple("-" * len(h) for h in header), *rows]:
        cells = "".join(c.ljust(w + 2) for c, w in zip(r, widths, strict=False))
        wrapped = textwrap.wrap(r[-1], last) or [""]
        out.append(cells + wrapped[0])
        out += [" " * lead + more for more in wrapped[1:]]
    return "\n".join(line.rstrip() for line in out)


def run_pull(args: argparse.Namespace) -> int:
    from dms.vision.registry import find_entry, pull

    target = pull(find_entry(args.name), args.dest, timeout_s=args.timeout_s)
    print(f"{args.name}: installed {target}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from dms.vision.registry import verify

    bad = 0
    for r in verify():
        print(f"{r.name:24s} {r.status:9s} {r.path or ''} {r.detail}".rstrip())
        bad += r.status == "mismatch"
    return 1 if bad else 0
