"""Bulk segmentation of video archives (``roadseg infer``); the flow is in ``pipeline.py``.

inputs (what to segment) -> frames (frame ranges, decoding) -> segment (model actor)
-> render / mp4 (files) -> pipeline (the Ray Data job, resume state) -> report.
"""
