"""Training of the head-pose student (optional ``[train]`` extra: PyTorch, onnx).

Knowledge distillation of teachers (ground truth where it exists, an ensemble's soft targets
elsewhere) into a compact CNN with a 6D rotation head, exported to the ONNX contract the
runtime loads. Nothing at run time imports this package; ``import torch`` happens only here.
See docs/training.md.

Modules: ``backbones`` (ResNet, MobileNetV2/V3), ``heads`` (6D -> rotation), ``losses``
(geodesic, distillation), ``augment``, ``datasets`` (readers, synthetic heads, crops),
``rendered`` (faces rendered by :mod:`dms.synth` with AFLW-style boxes, cached),
``teachers``, ``distill`` (the loop), ``export`` (ONNX + checks + fp16/int8).
"""
