"""``dms demo``: the whole product on a scripted synthetic drive, offline, in one command.

Renders (or reuses a cached) 88 s drive of a public-domain face glancing at the mirrors and
the infotainment screen, closing its eyes, nodding and slumping; runs the full pipeline on it
(embedded models -> engine -> outputs), prints alerts as they happen, and writes an annotated
video (H.264 MP4) and a timeline plot; both steps show a progress bar on stderr. With
``--mqtt HOST:PORT`` the alerts also go to that broker through the durable outbox, exactly as
``dms run`` sends them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="watch dms react to a synthetic driver (offline)")
    p.add_argument("--scenario", default="demo",
                   help="shipped scenario name (`dms synth list`) or a scenario TOML")
    p.add_argument("--out", type=Path, default=Path("out/demo"),
                   help="directory for the annotated video, plot and events (default out/demo)")
    p.add_argument("--photo", default=None, help="face photo: astronaut, grace_hopper or PATH")
    p.add_argument("--ir", action="store_true", help="near-infrared-style grayscale camera")
    p.add_argument("--mqtt", metavar="HOST:PORT", help="also publish the alerts to this broker")
    p.add_argument("--no-video", action="store_true", help="skip the annotated video")
    p.add_argument("--json", action="store_true", help="alerts as JSON lines on stdout")
    p.set_defaults(func=run)


class _Bar:
    """A tqdm bar on stderr that appears on the first ``update(done, total)`` (nothing for a
    cached render) and is left at its total when the block ends."""

    def __init__(self, desc: str, what: str) -> None:
        self.desc, self.what = desc, what
        self._bar: Any = None

    def update(self, done: int, total: int) -> None:
        from tqdm import tqdm

        if self._bar is None:
            print(f"dms demo: rendering {self.what} ({total} frames, once)", file=sys.stderr)
            self._bar = tqdm(total=total, desc=self.desc, unit="frame", file=sys.stderr,
                             leave=True)
        self._bar.update(done - self._bar.n)

    def __enter__(self) -> _Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()


def _line(rec: dict[str, Any]) -> str:
    return (f"  t={rec['t_s']:6.2f}s  {rec['phase']:9s} L{rec['level']}  "
            f"{rec['type']}/{rec['reason']}")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from dms.config import load_config, state_dir
    from dms.engine.settings import EngineSettings
    from dms.outputs.routing import AlertOutputs, open_mqtt
    from dms.replay import replay_video
    from dms.synth.render import render_scenario
    from dms.viz import plot_timeline

    print(f"dms demo: scenario {args.scenario!r} (rendered once, then cached)", file=sys.stderr)
    with _Bar("render", "the synthetic drive") as render_bar:
        clip = render_scenario(args.scenario, photo=args.photo, ir=True if args.ir else None,
                               progress=render_bar.update)
    if clip.cached:
        print(f"dms demo: using the cached render in {clip.out_dir}", file=sys.stderr)
    settings = EngineSettings()
    comm = None
    if args.mqtt:
        cfg = load_config(None)
        comm = open_mqtt(cfg, state_dir(cfg), args.mqtt)
    bar = tqdm(total=clip.frames, desc="demo: pipeline + video", unit="frame", file=sys.stderr,
               leave=True)

    def on_event(rec: dict[str, Any]) -> None:
        text = json.dumps(rec) if args.json else _line(rec)
        if args.json:
            print(text, flush=True)
        else:
            bar.write(text, file=sys.stdout)

    outputs = AlertOutputs(comm, on_event=on_event)
    args.out.mkdir(parents=True, exist_ok=True)
    video_out = None if args.no_video else args.out / "annotated.mp4"
    try:
        def on_calibrated(t_s: float, state: Any) -> None:
            pitch, yaw = state.neutral_pitch_deg, state.neutral_yaw_deg
            bar.write(f"t={t_s:6.2f} s  calibrated: neutral pose learned from the driver "
                      f"(yaw {yaw:+.1f}, pitch {pitch:+.1f} deg; no mount needed); alerts "
                      "armed", file=sys.stdout)

        res = replay_video(clip.video, settings, outputs, out_video=video_out,
                           on_frame=lambda n: bar.update(1), on_calibrated=on_calibrated)
    finally:
        bar.close()
        drained = outputs.close(3.0)
    (args.out / "events.jsonl").write_text(
        "".join(json.dumps(e.to_dict()) + "\n" for e in res.events))
    expected_doc = json.loads(Path(clip.expected_events).read_text())
    (args.out / "expected.json").write_text(json.dumps(expected_doc, indent=2) + "\n")
    expected = expected_doc["events"]
    plot = plot_timeline(res.samples, res.events, settings.zones, args.out / "timeline.png",
                         res.calibrated_at_s, res.eye_samples, traces=res.traces,
                         expected=[(e["type"], e["t_s"] - e["tolerance_s"],
                                    e["t_s"] + e["tolerance_s"]) for e in expected])
    raised = [e for e in res.events if e.phase.value == "raised"]
    found = 0
    for exp in expected:
        hit = any(e.type.value == exp["type"] and abs(e.t_s - exp["t_s"]) <= exp["tolerance_s"]
                  for e in raised)
        found += hit
    out = sys.stderr if args.json else sys.stdout
    print(f"\n{res.frames} frames, face found in {res.faces / max(res.frames, 1):.0%}; "
          f"{len(raised)} alerts raised; {found} of {len(expected)} scripted alerts on time",
          file=out)
    if video_out is not None:
        print(f"annotated video: {video_out}", file=out)
    print(f"timeline plot:   {plot}\nevents:          {args.out / 'events.jsonl'}", file=out)
    print(f"expected:        {args.out / 'expected.json'} (the script's alerts; one on time is "
          "a raised event of the same type within t_s +- tolerance_s)", file=out)
    print(f"clean clip:      {clip.video} (replay it yourself: dms replay {clip.video}; the "
          "annotated video is refused, its overlays cover the face)", file=out)
    if comm is not None:
        print(f"mqtt: {outputs.published} alerts sent to {args.mqtt}"
              + ("" if drained else " (outbox not yet drained: the next run delivers the rest)"),
              file=out)
    return 0
