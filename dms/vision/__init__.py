"""Vision adapters: ONNX Runtime sessions, face detectors, head-pose estimators.

Nothing heavy is imported here; import the submodule you need.
"""
