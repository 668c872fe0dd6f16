"""The errors a user reads. The core raises them; only ``cli/`` turns them into click errors.

    SettingsError    settings.py          a setting's value is wrong             usage error, exit 2
    DatasetError     data/bdd100k.py      the input dataset is not usable        exit 1
    CheckpointError  models/checkpoint.py a checkpoint cannot be loaded          exit 1
    InputError       infer/pipeline.py    inference input or output unusable     exit 1
    JobError         here                 a job cannot start or did not finish   exit 1
    MissingExtra     extras.py            an optional extra is not installed     exit 1

Each message names the file or value at fault and says what to do; none holds a credential.
"""
from __future__ import annotations


class JobError(RuntimeError):
    """A job cannot start (inputs missing, a helper not installed) or did not finish (workers failed)."""


class MissingExtra(JobError):
    """A command needs an optional extra (``pip install 'roadseg_dist[EXTRA]'``) that is not installed."""
