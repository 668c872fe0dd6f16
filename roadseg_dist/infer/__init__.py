"""Bulk segmentation of video archives (``roadseg infer``); the flow is in ``pipeline.py``.

inputs (what to segment, from one listing) -> plan (whole sources, frame ranges of long ones) ->
graph (Ray: units of work as Ray Data tasks, model actors) -> process (one unit: frames decoded,
segmented through ``segment``'s actor, rendered by ``render``/``video_out``, written) -> ledger
(ranges join up) -> commits/state (batches of done sources, frames/ parts) -> report.
"""
