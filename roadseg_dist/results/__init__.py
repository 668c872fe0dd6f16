"""Looking at and searching a segmented archive: ``roadseg view`` and ``roadseg frames``.

    OUTPUT/report.json + frames.parquet + checkpoint meta ──run.py──► RunView
      ──page.py──► OUTPUT/index.html (the run, one row per source) and OUTPUT/<id>/index.html
                   (overlay.mp4, timeline.py's class-fraction SVG, moments.py's thumbnail strip)
    OUTPUT/frames.parquet ──query.py (DuckDB)──► matching frames ──sheet.py──► a contact sheet
"""
