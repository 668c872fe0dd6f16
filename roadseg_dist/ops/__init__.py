"""The cluster edge: what every Ray job shares, and nothing a stage's logic needs.

``cluster`` (starting or joining Ray, worker set-up, our errors out of Ray's wrappers), ``resources``
(what a job reserves against what Ray offers), ``watchdog`` (stalls), ``progress`` (progress lines and
the board workers post to), ``submit`` / ``ship`` (cluster jobs and what they ship).
"""
