"""Looking at and searching a segmented archive: ``roadseg view`` and ``roadseg frames``.

    OUTPUT/report.json + frames/ + checkpoint meta ──runview.py──► RunView
      ──page.py──► OUTPUT/index.html (the run, one row per source) and OUTPUT/<id>/index.html
                   (overlay.mp4, timeline.py's class-fraction SVG, moments.py's thumbnail strip)
    OUTPUT/frames/ ──query.py (DuckDB)──► matching frames ──sheet.py──► a contact sheet
"""
