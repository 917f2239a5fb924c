"""Synthetic driver videos: a real photo lifted to a textured 3-D head, rendered along a
scripted head trajectory into an in-cabin scene, with ground-truth poses and expected events.

``lift`` (photo -> 3-D face), ``script`` (script format, trajectory, expected events),
``render`` (camera, scene, effects), ``video`` (whole clips, cache), ``evaluate`` (a pose
estimator against the ground truth). See docs/synth.md.
"""
