#!/usr/bin/env bash
# The GPU figures of the README on a CUDA machine: the gpu-marked tests, then the three speed benchmarks, one at a
# time (nothing else should run on the GPU meanwhile). Each has a time limit; logs and JSON go to OUT.
#
#   bash benchmarks/gpu_figures.sh OUT [--no-tests]
set -u
out=${1:?usage: bash benchmarks/gpu_figures.sh OUT [--no-tests]}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
step() {  # step NAME SECONDS COMMAND...: run COMMAND with a limit, its output in OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit} s)"
    local t0=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    echo "== $name: exit $? after $((SECONDS - t0)) s"
}
if [ "${2:-}" != "--no-tests" ]; then
    step gpu-tests 240 "$py" -m pytest -m gpu tests/test_kernels.py -q -p no:cacheprovider
fi
step kernel-speed 150 "$py" benchmarks/kernel_speed.py --device cuda --no-compile --json "$out/kernel-speed.json"
step probe-speed 90 "$py" benchmarks/probe_speed.py --device cuda --dtype float16 --json "$out/probe-speed.json"
step sampler-overhead 180 "$py" benchmarks/sampler_overhead.py --device cuda --dtype float16 \
    --json "$out/sampler-overhead.json"
