"""The errors a user reads: this is the list. The core raises them; only ``cli/`` turns them into click
errors, mapping exactly ``user_errors()`` (and ``SettingsError``, a usage error).

    SettingsError    settings.py          a setting's value is wrong                      usage error, exit 2
    DatasetError     data/bdd100k.py      the input dataset is not usable                 exit 1
    CheckpointError  models/checkpoint.py a checkpoint cannot be loaded                   exit 1
    InputError       here                 inference input or output unusable              exit 1
    JobError         here                 a job cannot start or did not finish            exit 1
    MissingExtra     here                 an optional extra is not installed (a JobError) exit 1
    ResourceError    here                 the job does not fit the cluster                exit 1
    StallError       here                 no progress for --stall-timeout                 exit 1
    StorageError     retries.py           S3 unreachable, credentials refused, no bucket  exit 1
    ImageTooLarge    images.py            an image declares more pixels than allowed      exit 1
    FileNotFoundError (Python's own)      a named file is not there                       exit 1

Each message names the file or value at fault and says what to do; none holds a credential.
"""
from __future__ import annotations


class JobError(RuntimeError):
    """A job cannot start (inputs missing, a helper not installed) or did not finish (workers failed)."""


class MissingExtra(JobError):
    """A command needs an optional extra (``pip install 'roadseg_dist[EXTRA]'``) that is not installed."""


class InputError(Exception):
    """INPUT, CKPT or OUTPUT of ``roadseg infer`` cannot be used as given."""


class ResourceError(Exception):
    """The job cannot fit the cluster; the message names the numbers and the flag to change."""


class StallError(RuntimeError):
    """No progress for the configured time; the message is the diagnosis."""


def user_errors() -> tuple[type[Exception], ...]:
    """The errors whose message is meant for the user as it is (``Error: message``, exit 1)."""
    from roadseg_dist.data.bdd100k import DatasetError
    from roadseg_dist.images import ImageTooLarge
    from roadseg_dist.models.checkpoint import CheckpointError
    from roadseg_dist.retries import StorageError

    return (DatasetError, CheckpointError, InputError, JobError, ResourceError, StallError, StorageError,
            ImageTooLarge, FileNotFoundError)
