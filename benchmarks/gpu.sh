#!/usr/bin/env bash
# The CUDA checks and benchmarks in one run, for a machine with an NVIDIA GPU.
#
# Runs the CUDA tests (tests/engine/test_cuda.py, tests/scan/test_pipeline.py), benchmarks/cuda_precision.py and
# benchmarks/{projection,server,shared_forward,scan,occlusion}.py with --device cuda, each under its own time
# limit, and writes every log to OUT (default ./out/gpu). Name steps to run only those.
# Needs the project importable: either installed (`pip install -e .[test]`) or, on a machine
# without a package index, wheels of the missing dependencies in ./.whl (installed to /tmp/site).
#
#     bash benchmarks/gpu.sh                      # everything; logs in out/gpu/
#     bash benchmarks/gpu.sh tests occlusion      # only these steps
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

if [ -d .whl ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD/backend${PYTHONPATH:+:$PYTHONPATH}
fi

ONLY=" $* "
step() {  # step NAME SECONDS COMMAND...: run with a limit, log to $OUT/NAME.log, go on on failure
    local name=$1 limit=$2
    shift 2
    if [ "$ONLY" != "  " ] && [ "$name" != env ] && [[ "$ONLY" != *" $name "* ]]; then return; fi
    echo "=== $name ($(date -u +%H:%M:%S), limit ${limit}s): $*"
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 40 "$OUT/$name.log"
    echo "=== $name: exit $rc"
}

step env 60 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; \
    $PY -c 'import torch, timm, captum, fastapi; print(torch.__version__, timm.__version__, captum.__version__, fastapi.__version__, torch.cuda.get_device_name(0))'"
step tests 240 "$PY" -m pytest -q -p no:cacheprovider tests/engine/test_cuda.py tests/engine/test_devices.py \
    tests/scan/test_pipeline.py
step precision 120 "$PY" benchmarks/cuda_precision.py
step projection 120 "$PY" benchmarks/projection.py --device cuda --repeats 9
step projection-tf32 120 "$PY" benchmarks/projection.py --device cuda --repeats 9 --tf32
step server 120 "$PY" benchmarks/server.py --device cuda --json "$OUT/server.json"
step shared 120 "$PY" benchmarks/shared_forward.py --device cuda --n 1 4 8 16 --repeats 9
step scan 300 "$PY" benchmarks/scan.py --device cuda --images 20000 --slow-images 2000 --json "$OUT/scan.json"
step occlusion 150 "$PY" benchmarks/occlusion.py --device cuda --pairs 3 --batch 8 16 32 128
