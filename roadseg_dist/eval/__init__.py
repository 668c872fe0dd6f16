"""The evaluation stage: ``roadseg eval`` (``evaluate.run``) and ``roadseg compare`` (``compare.run``), on the
scoring of ``score.py`` (plain prediction, Ray scoring), settings in ``settings.py``, reports in ``report.py``."""
