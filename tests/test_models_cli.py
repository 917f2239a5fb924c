"""``dms models list``: a table with a header, the defaults marked, restrictive licences
flagged; ``--json`` carries the same."""

from __future__ import annotations

import json

import pytest

from dms.cli import main
from dms.config import VisionSettings
from dms.vision.registry import load_manifest


def _list(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["models", "list", *args]) == 0
    return capsys.readouterr().out


def test_the_table_has_a_header_and_aligned_columns(capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("COLUMNS", "250")
    lines = _list(capsys).splitlines()
    header = lines[0]
    assert header.split() == ["NAME", "TASK", "DEFAULT", "HERE", "LICENCE"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    names = [e.name for e in load_manifest()]
    rows = lines[2:2 + len(names)]
    assert [r.split()[0] for r in rows] == names
    for column in ("TASK", "DEFAULT", "HERE", "LICENCE"):
        at = header.index(column)
        for r in rows:  # every cell starts under its heading
            assert r[at - 1] == " " and (r[at] != " " or column == "DEFAULT"), (column, r)


def test_defaults_and_restrictive_licences_are_marked(capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("COLUMNS", "250")
    out = _list(capsys)
    rows = {line.split()[0]: line for line in out.splitlines()[2:] if line.strip()}
    v = VisionSettings()
    for name in (v.detector.model, v.pose.model, v.eyes.model,
                 v.pose.landmarks.mirror_model):
        assert " * " in rows[name], rows[name]
    assert " * " not in rows["student_fm192"] and " ! research" in rows["student_fm192"]
    assert " ! insightface" in rows["scrfd_500m"]
    assert " ! " not in rows["blazeface"]
    assert "* used by default" in out and "! licence limits use" in out


def test_a_narrow_terminal_wraps_the_licence_under_its_column(capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("COLUMNS", "100")
    lines = _list(capsys).splitlines()
    at = lines[0].index("LICENCE")
    more = [ln for ln in lines[2:] if ln.startswith(" " * at) and ln.strip()]
    assert more and all(len(ln) <= max(100, at + 30) for ln in lines), at


def test_json_says_the_default_role_and_whether_the_licence_restricts(capsys) -> None:  # type: ignore[no-untyped-def]
    rows = {r["name"]: r for r in map(json.loads, _list(capsys, "--json").splitlines())}
    assert rows["blazeface"]["default"] == "detector"
    assert rows["student_fm192"]["default"] is None
    assert rows["student_fm192"]["restricted"] and not rows["iris"]["restricted"]
