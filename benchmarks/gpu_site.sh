#!/usr/bin/env bash
# Builds what benchmarks/gpu_figures.sh carries to a bare GPU machine (carry: .gpu), under 64 MiB:
#   .gpu/gpusite.tar.xz  the packages such a machine lacks, as wheels for its Python (default 3.12),
#                        unpacked, with what the figures never use left out (Ray's Java jars, RLlib, Serve,
#                        LLM, the dashboard's web client; botocore's data beyond S3/STS/SSO) and the symbol
#                        tables of Ray's three big binaries stripped
#   .gpu/vtest.avi       OpenCV's sample video (Debian's opencv-doc: bash tests/setup_system.sh)
# The machine's own torch, torchvision, numpy, pyarrow, pandas, timm, opencv, pillow, tensorboard and
# matplotlib are used as they are. Run from the repository root: bash benchmarks/gpu_site.sh
set -eu
PYV=${PYV:-3.12}
PY=${PY:-.venv/bin/python}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
pins() { for n in "$@"; do grep -i "^$n==" constraints.txt || { echo "not in constraints.txt: $n" >&2; exit 1; }; done; }
$PY -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp -d "$W/whl" \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  $(pins ray av simplejpeg segmentation-models-pytorch webdataset braceexpand s3fs fsspec aiobotocore botocore \
         jmespath aioitertools jsonschema jsonschema-specifications referencing rpds-py pydantic pydantic-core \
         annotated-types typing-inspection tensorboardx click)
$PY -m pip install -q --no-index --no-deps --no-compile --target "$W/gpusite" --python-version "$PYV" --implementation cp \
  --only-binary=:all: --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any "$W"/whl/*.whl
cd "$W/gpusite"
rm -rf ray/jars ray/rllib ray/serve ray/llm ray/dashboard/client/build
(cd botocore/data && ls | grep -v -E '^(s3|sts|sso|sso-oidc)$|\.json$' | xargs rm -rf)
strip --strip-unneeded ray/_raylet.so ray/core/src/ray/raylet/raylet ray/core/src/ray/gcs/gcs_server
cd - >/dev/null
mkdir -p .gpu
tar -cf - -C "$W" gpusite | xz -T2 -9 > .gpu/gpusite.tar.xz
cp /usr/share/doc/opencv-doc/examples/data/vtest.avi .gpu/vtest.avi
du -ch .gpu/* | tail -1
