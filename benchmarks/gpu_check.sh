#!/usr/bin/env bash
# benchmarks/gpu_check.py on a lent GPU machine without internet. It has torch, transformers,
# accelerate and peft; the rest comes as wheels carried in .wheels/, made here with
#   pip download --no-deps -d .wheels diffusers torchao pillow importlib_metadata zipp \
#       "setuptools>=77" wheel "packaging>=24"
# installed only where the module is missing; the pack itself is installed from this checkout
# (its build backend from the same wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
for pair in diffusers:diffusers torchao:torchao PIL:pillow importlib_metadata:importlib_metadata zipp:zipp; do
    module=${pair%%:*} wheel=${pair##*:}
    if ! python -c "import $module" 2>/dev/null; then
        python -m pip install -q --no-deps --no-index .wheels/"$wheel"-*.whl
    fi
done
python -m pip install -q --no-deps --no-index --find-links .wheels .
cd benchmarks
exec python gpu_check.py --json "$@"
