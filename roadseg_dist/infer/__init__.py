"""Bulk segmentation of video archives (``roadseg infer``); the flow is in ``pipeline.py``.

inputs (what to segment) -> frames (PyAV decoding, exact frame ranges) -> graph (the Ray Data job:
decode tasks, segment's model actors, render's files) -> ledger (ranges back, joined up) -> state
(resume markers) -> video_out (overlay.mp4) -> report. rows defines what flows between them.
"""
