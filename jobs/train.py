"""Cluster entrypoint for `roadseg train`: what a job submitted with `roadseg submit train -- ARGS` runs.

    ray job submit --address http://HEAD:8265 --runtime-env jobs/runtime_env.yaml -- python jobs/train.py ARGS

Inside a Ray job `RAY_ADDRESS` names the cluster, so the command connects to it instead of
starting a local Ray. ARGS are exactly those of `roadseg train --help`.
"""
import sys

from roadseg_dist.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]], prog_name="roadseg train"))
