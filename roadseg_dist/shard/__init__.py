"""The shard stage: ``roadseg shard`` (``settings.py`` ShardSettings; ``job.py`` the Ray tasks, validate-then-publish,
``run``). The shard format itself (write and read) lives below every stage, in ``data/``."""
