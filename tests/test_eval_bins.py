"""Per-|yaw|-bin MAE in `dms eval`: the arithmetic on known numbers, then the command on the
64 AFLW2000 faces of ../shared (skipped when absent)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from dms.evaluation import YAW_BINS_DEG, EvalResult, yaw_bins


def test_bins_split_by_absolute_ground_truth_yaw_with_the_lower_edge_included():
    err = np.array([
        [1.0, 2.0, 3.0],    # yaw 0      -> 0-30
        [3.0, 4.0, 5.0],    # yaw -29.9  -> 0-30
        [10.0, 20.0, 30.0],  # yaw 30    -> 30-60 (lower edge belongs to the upper bin)
        [0.0, 6.0, 0.0],    # yaw -59.99 -> 30-60
        [5.0, 50.0, 5.0],   # yaw 60     -> 60-99
        [1.0, 1.0, 1.0],    # yaw -99    -> 60-99 (the protocol's limit is kept)
    ])
    yaw = np.array([0.0, -29.9, 30.0, -59.99, 60.0, -99.0])
    b = yaw_bins(err, yaw)
    assert [x.label for x in b] == ["0-30", "30-60", "60-99"]
    assert [x.n for x in b] == [2, 2, 2]
    assert (b[0].pitch_mae, b[0].yaw_mae, b[0].roll_mae) == (2.0, 3.0, 4.0)
    assert b[0].mean_mae == pytest.approx(3.0)
    assert (b[1].pitch_mae, b[1].yaw_mae, b[1].roll_mae) == (5.0, 13.0, 15.0)
    assert b[2].yaw_mae == pytest.approx(25.5)
    assert b[2].mean_mae == pytest.approx((3.0 + 25.5 + 3.0) / 3)


def test_an_empty_bin_reports_nan_with_zero_faces_and_mismatched_inputs_are_refused():
    b = yaw_bins(np.array([[1.0, 1.0, 1.0]]), np.array([10.0]))
    assert b[0].n == 1 and b[1].n == 0 and b[2].n == 0
    assert math.isnan(b[1].mean_mae) and math.isnan(b[2].yaw_mae)
    with pytest.raises(ValueError, match="2 error rows but 1 yaw"):
        yaw_bins(np.ones((2, 3)), np.array([0.0]))


def test_eval_result_dict_carries_the_bins():
    bins = yaw_bins(np.array([[1.0, 2.0, 3.0]]), np.array([45.0]))
    r = EvalResult(1, 0, 1.0, 2.0, 3.0, 2.0, 2.0, 1, 0, 0, 2.0, bins)
    d = r.as_dict()
    assert [x["bin"] for x in d["bins"]] == ["0-30", "30-60", "60-99"]
    assert d["bins"][1] == {"bin": "30-60", "lo_deg": 30.0, "hi_deg": 60.0, "n": 1,
                            "pitch_mae": 1.0, "yaw_mae": 2.0, "roll_mae": 3.0, "mean_mae": 2.0}
    json.dumps(d)  # serialisable as printed by --json


def _eval(aflw_dir, *extra: str) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "dms", "eval", str(aflw_dir), "--boxes", "gt",
                        *extra], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return p


def test_eval_json_and_text_report_bins_that_add_up_to_the_overall_figures(aflw_dir):
    out = json.loads(_eval(aflw_dir, "--json").stdout)
    bins = out["bins"]
    assert [b["bin"] for b in bins] == [f"{lo:g}-{hi:g}" for lo, hi in YAW_BINS_DEG]
    found = out["n"] - out["not_found"]
    assert sum(b["n"] for b in bins) == found
    assert bins[0]["n"] > bins[2]["n"] > 0  # the 64-face subset is mostly near-frontal
    for axis in ("pitch_mae", "yaw_mae", "roll_mae", "mean_mae"):
        weighted = sum(b[axis] * b["n"] for b in bins if b["n"]) / found
        assert weighted == pytest.approx(out[axis], abs=1e-9)
    text = _eval(aflw_dir).stdout
    assert "per |yaw| bin" in text
    for b in bins:
        row = next(line for line in text.splitlines() if line.strip().startswith(b["bin"] + " "))
        assert f"{b['mean_mae']:.2f}" in row and str(b["n"]) in row
