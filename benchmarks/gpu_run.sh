#!/usr/bin/env bash
# One GPU run of benchmarks/gpu.py on the lent device machine (torch and transformers are there,
# pyzmq and this package are not, and it has no network). From the repository root, here:
#   mkdir -p .git/info && echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl pyzmq==27.3.0
# then run this script through the device tool with carry [".whl"] and a timeout of ~540 s:
#   bash benchmarks/gpu_run.sh            (extra arguments go to benchmarks/gpu.py)
# The 480 s budget leaves about 4 minutes of a 15-minute device allowance (after a 1-2 minute
# start) for a second, shorter call on the still-warm machine if a section fails, e.g.
#   bash benchmarks/gpu_run.sh --sections overhead:static --budget-s 200
# or, with time to spare, the optional per-stage cost on the GPU:
#   bash benchmarks/gpu_run.sh --sections overhead:breakdown --budget-s 150
# The first H200 run (2026-11-27, benchmarks/RESULTS.md) measured memory flat; what is still open
# is eager overhead (issue 6), so a run can leave memory out and give eager its ~90 s:
#   bash benchmarks/gpu_run.sh --sections correctness frame_op hooks overhead:eager overhead:static
# Each section's results are saved as soon as it ends. The inductor and triton caches live in
# .cache/ here (ignored by git, kept on a warm machine), so such a second call compiles faster.
# Results land in $OUT (gpu.json, gpu.txt, traces, log.txt.gz).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-out}"
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
# neuralflow without installing it: a namespace folder whose parts point at this checkout
mkdir -p /tmp/nf/neuralflow
for part in engine viewer benchmarks; do ln -sfn "$PWD/$part" "/tmp/nf/neuralflow/$part"; done
export PYTHONPATH="/tmp/nf:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
export TORCHINDUCTOR_CACHE_DIR="$PWD/.cache/inductor" TRITON_CACHE_DIR="$PWD/.cache/triton"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu_card.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
python3 -m neuralflow.benchmarks.gpu --out "$out" --budget-s 480 "$@" 2>&1 | tee "$out/log.txt"
status=$?
gzip -f "$out/log.txt"  # the cudagraphs log is large; $OUT takes files up to 16 MiB
exit $status
