"""The installer's live preview: an optional HTTP page with the camera's annotated stream,
the service's status and the calibrate/mute buttons (``[preview]`` in ``dms run``, and
``dms preview --source SRC`` on a bench). Off by default; 127.0.0.1 and a token by default.

:mod:`dms.preview.settings` is light (the configuration imports it); :mod:`dms.preview.hub`
draws and encodes the frames; :mod:`dms.preview.server` serves them.
"""
