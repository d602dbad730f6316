#!/usr/bin/env bash
# benchmarks/gpu_check.py on a lent GPU machine without internet. It has torch, transformers,
# accelerate and peft; the rest comes as wheels carried in .wheels/, made here with
#   pip download --no-deps -d .wheels diffusers torchao pillow importlib_metadata zipp
# and installed only where the module is missing. The pack is imported from this checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
for pair in diffusers:diffusers torchao:torchao PIL:pillow importlib_metadata:importlib_metadata zipp:zipp; do
    module=${pair%%:*} wheel=${pair##*:}
    if ! python -c "import $module" 2>/dev/null; then
        python -m pip install -q --no-deps --no-index .wheels/"$wheel"-*.whl
    fi
done
pkg=$(mktemp -d)
ln -s "$PWD" "$pkg/science_t2i"
export PYTHONPATH="$pkg${PYTHONPATH:+:$PYTHONPATH}"
cd benchmarks
exec python gpu_check.py --json "$@"
