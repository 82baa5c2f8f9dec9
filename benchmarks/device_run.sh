#!/usr/bin/env bash
# Issue 15's device run: benchmarks/bench_gpu.py --preset gpu on one H200, in one call that fits
# twice in the 15-minute lease (this script stops itself after about 8 minutes).
#
# From a session that is lent the device (the `run` tool of the device library):
#   run(command="bash benchmarks/device_run.sh", carry=[".whl"], timeout_s=560)
# The wheels in .whl/ (ignored by git through .git/info/exclude) are what the device image lacks;
# make them with `bash benchmarks/device_run.sh --fetch-wheels` on a machine with pip and PyPI.
# Results come back in $OUT: bench_gpu.json (written after every section), bench_gpu.log,
# gpu_tests.log and env.txt. BENCH_GPU_ARGS and WHEEL_DIR override the benchmark's arguments and
# the wheel folder (a CPU rehearsal: BENCH_GPU_ARGS="--preset smoke --device cpu").
set -uo pipefail
cd "$(dirname "$0")/.."

WHEELS=(
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  typing-extensions==4.16.0 gguf==0.19.0 trl==1.16.0 datasets==5.2.0 dill==0.4.1
  multiprocess==0.70.19
)

if [[ "${1:-}" == "--fetch-wheels" ]]; then
  # The device runs CPython 3.12 on x86-64 (KINDS.md); only pydantic-core has compiled code.
  exec python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${WHEELS[@]}"
fi
if [[ "${1:-}" == "--help" || "${1:-}" == "-h" ]]; then
  sed -n '2,12p' "$0"; exit 0
fi

OUT=${OUT:-/tmp/device_run_out}
mkdir -p "$OUT"
start=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "${WHEEL_DIR:-.whl}"/*.whl \
  || { echo "wheel install failed"; exit 3; }
export PYTHONPATH=/tmp/site:$PWD/api:$PWD/trainer:$PWD/operator:$PWD
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.sm,clocks.max.sm,power.draw,power.limit,temperature.gpu,utilization.gpu --format=csv
  python3 -c "import torch, transformers, peft, accelerate, trl, datasets, pydantic; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__, 'trl', trl.__version__, 'datasets', datasets.__version__, 'pydantic', pydantic.__version__)"
} 2>&1 | tee "$OUT/env.txt"

# The benchmark: its JSON is rewritten after every section, so a cut-short run keeps what it did.
# shellcheck disable=SC2086  # BENCH_GPU_ARGS is a word list
timeout 420 python3 benchmarks/bench_gpu.py ${BENCH_GPU_ARGS:---preset gpu --device cuda} --json "$OUT/bench_gpu.json" 2>&1 \
  | tee "$OUT/bench_gpu.log"
bench_rc=${PIPESTATUS[0]}

# The CUDA cases of the dtype/device tests, where the time is left (they skip on a CPU machine).
left=$(( 500 - ($(date +%s) - start) ))
if (( left > 30 )); then
  timeout "$left" python3 -m pytest -q -p no:cacheprovider -m "not slow" tests/benchmarks tests/unit/trainer -k "cuda or gpu" \
    2>&1 | tail -40 | tee "$OUT/gpu_tests.log"
fi
nvidia-smi --query-gpu=clocks.sm,power.draw,temperature.gpu --format=csv,noheader | tee -a "$OUT/env.txt"
echo "bench_gpu exit $bench_rc after $(( $(date +%s) - start )) s"
exit "$bench_rc"
