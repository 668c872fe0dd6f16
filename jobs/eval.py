"""Cluster entrypoint for `roadseg eval`: what a job submitted with `roadseg submit eval -- ARGS` runs.

    ray job submit --address http://HEAD:8265 --runtime-env jobs/runtime_env.yaml -- python jobs/eval.py ARGS

Inside a Ray job `RAY_ADDRESS` names the cluster, so the command connects to it instead of
starting a local Ray. ARGS are exactly those of `roadseg eval --help`.
"""
import sys

from roadseg_dist.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]], prog_name="roadseg eval"))
