"""One scenario language (dms.sim.script) for the engine's pose stories and the renderer:
the same text means the same story in both, old engine scripts keep their meaning, and the
expected alerts are declared in the scripts with their time windows."""

from __future__ import annotations

import pytest

from dms.cli import main
from dms.engine.events import EventType, Phase
from dms.engine.settings import EngineSettings
from dms.sim.scenarios import ScenarioBuilder, build_script, raised, run
from dms.sim.script import NOD_S, ScriptError, parse
from dms.synth.script import list_scenarios, load_scenario

S = EngineSettings()


def _poses(text: str) -> list[tuple[float, object]]:
    sc = build_script(text, S)
    return [(o.t_s, None if o.pose is None else o.pose.rotation.round(9).tobytes())
            for o in sc.observations]


def test_old_engine_syntax_and_the_canonical_form_mean_the_same() -> None:
    old = "road 5; glance left_mirror 1.2; nod; slump 5; lost 3; road 2"
    new = "road 5s; glance left-mirror 1200ms; nod; slump 5s; occlude 3s; road 2000ms"
    assert _poses(old) == _poses(new)
    assert _poses("road 2; block 3; road 1") == _poses("road 2s; lost 3s; road 1s")
    glance = build_script("road 1; glance 20,-10 2", S).segments[1]
    assert (glance.yaw_inboard_deg, glance.pitch_deg) == (20.0, -10.0)


def test_renderer_only_steps_are_ignored_by_the_pose_builder() -> None:
    plain = _poses("road 5s; road 2s; road 3s")
    assert _poses("road 5s; sunglasses on; hand 2s; light 0.5 over 1s; road 3s") == plain
    assert _poses("road 5s; hand 2s; sunglasses off; road 3s") == plain


def test_engine_only_steps_still_work() -> None:
    sc = build_script("speed 0; road 2; steering 12; glance_lost passenger 3; speed none; "
                      "steering none; road 1", S, rate_hz=10)
    assert [s.kind for s in sc.segments] == ["road", "glance_lost", "road"]
    assert sc.observations[0].speed_kmh == 0.0 and sc.observations[0].steering_deg is None
    assert sc.observations[25].steering_deg == 12.0
    assert any(o.pose is None for o in sc.observations[20:50])  # lost beyond 45 deg
    assert sc.observations[-1].speed_kmh is None and sc.observations[-1].steering_deg is None


def test_nods_spread_over_a_duration() -> None:
    sc = build_script("road 5s; nod x3 over 30s; road 5s", S)
    nods = sc.segments_of("nod")
    assert len(nods) == 3 and sc.duration_s == pytest.approx(40.0)
    assert all(n.duration_s == pytest.approx(NOD_S) for n in nods)
    gap = (30 - 3 * NOD_S) / 3
    assert nods[0].start_s == pytest.approx(5 + gap / 2)
    assert nods[1].start_s - nods[0].start_s == pytest.approx(10.0)
    assert [(e.type, e.t_s > nods[2].start_s) for e in raised(run(sc))] == [
        (EventType.DROWSINESS, True)]


def test_away_loses_the_face_while_turned_and_counts_as_a_glance() -> None:
    sc = build_script("road 6s; away 4s; road 6s", S)
    lost = [o.t_s for o in sc.observations if o.pose is None]
    assert lost and min(lost) > 6.0 and max(lost) < 10.0
    assert [(e.type, e.reason.value) for e in raised(run(sc))] == [
        (EventType.DISTRACTION, "long_glance")]


def test_expect_lines_declare_alerts_with_windows() -> None:
    sc = parse("road 6s\nglance infotainment 4s  # long\n"
               "expect distraction/long_glance L1..2 9.0..9.6\nroad 6s\n"
               "expect slump 15..16; expect system_degraded L2 10.5..11")
    lg, slump, degraded = sc.expectations
    assert (lg.type, lg.reason, lg.level, lg.max_level) == ("distraction", "long_glance", 1, 2)
    assert (lg.lo_s, lg.hi_s, lg.line, lg.step.text) == (9.0, 9.6, 3, "glance infotainment 4s")
    assert lg.contains(9.0) and lg.contains(9.6) and not lg.contains(9.7)
    assert (slump.reason, slump.level, slump.step.start_s) == ("head_down", None, 10.0)
    assert degraded.reason == "no_face"
    d = lg.to_dict()
    assert d["t_s"] == pytest.approx(9.3) and d["tolerance_s"] == pytest.approx(0.3)
    assert {"type", "reason", "level", "max_level", "t_s", "tolerance_s", "start_s",
            "step", "window_s"} <= set(d)
    assert d["start_s"] == 6.0 and d["window_s"] == [9.0, 9.6]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("road 5s; expect sleep 1..2", "unknown alert type 'sleep'"),
        ("road 5s; expect distraction 1..2", "say which distraction"),
        ("road 5s; expect slump/nodding 1..2", "slump has no reason 'nodding'"),
        ("road 5s; expect slump L3", "no time window"),
        ("road 5s; expect slump 2..1", "must be ordered"),
        ("road 5s; expect slump 4..6", "end by the script's end (5 s)"),
        ("road 5s; expect slump L3..1 1..2", "below L3"),
        ("road 5s; expect slump L4 1..2", "unexpected 'L4'"),
        ("expect slump 1..2; road 5s", "follows the step that causes"),
        ("road 5s; expect", "expect TYPE"),
    ],
)
def test_expect_errors_name_line_and_token(text: str, needle: str) -> None:
    with pytest.raises(ScriptError) as info:
        parse(text, source="x.toml: script")
    assert needle in str(info.value) and str(info.value).startswith("x.toml: script: line 1")


def test_builder_expectations_follow_where_the_script_starts() -> None:
    b = ScenarioBuilder(S).road(10).script("glance infotainment 4s; road 3s\n"
                                            "expect distraction/long_glance 3..3.6")
    sc = b.build()
    assert [(e.lo_s, e.hi_s) for e in sc.expectations] == [(13.0, 13.6)]
    with pytest.raises(ValueError, match="unknown glance target 'moon'"):  # old callers
        ScenarioBuilder(S).script("road 1; glance moon 2")


@pytest.mark.parametrize("name", list_scenarios())
def test_shipped_scenarios_through_the_pose_builder(name: str) -> None:
    """The renderer's scenarios mean the same story to the engine's builder: the alerts it
    raises are the declared ones (kinds and levels; its linear 0.25 s turns are not the
    rendered 0.4 s minimum-jerk ones, so times are checked on the rendered ground truth in
    tests/test_synth.py)."""
    script = load_scenario(name).script
    sc = build_script(script.text, S)
    got = [(e.type.value, e.reason.value, e.level) for e in run(sc) if e.phase is Phase.RAISED]
    want = [(e.type, e.reason, e.level) for e in script.expectations]
    assert got == want


def test_scenarios_write_takes_the_demo_syntax_and_synth_scenarios(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "x.csv"
    assert main(["scenarios", "write", "road 5s; glance left-mirror 1.2s; nod x3 over 12s; "
                 "sunglasses on; hand 1.5s; occlude 3s; away 4s", "--out", str(out)]) == 0
    rows = out.read_text().splitlines()
    assert rows[0].startswith("t,yaw,pitch,roll,face") and len(rows) == 1 + int(26.7 * 20)
    assert main(["scenarios", "write", "demo", "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 1 + int(load_scenario("demo").script.duration_s
                                                        * 20)
    capsys.readouterr()
    assert main(["scenarios", "write", "road 5s; glance moon 1s", "--out", str(out)]) == 2
    assert "unknown glance target 'moon'" in capsys.readouterr().err
    assert main(["scenarios", "write", "nosuch", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "unknown scenario 'nosuch'" in err and "demo" in err
