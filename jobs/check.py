"""Cluster entrypoint of the smoke check: one task on every alive node reports what it finds.

    roadseg submit check [-- s3://bucket/prefix]

Prints one ``node {...}`` JSON line per node (node id, host, roadseg and torch versions, GPUs,
resources, and whether the node reaches the optional storage URL), then ``N node(s) alive``.
"""
import sys

from roadseg_dist.ops.submit import check_cluster, print_reports

if __name__ == "__main__":
    if len(sys.argv) > 2 or (len(sys.argv) == 2 and sys.argv[1].startswith("-")):
        sys.exit("usage: python jobs/check.py [STORAGE_URL]")
    print_reports(check_cluster(sys.argv[1] if len(sys.argv) == 2 else None))
