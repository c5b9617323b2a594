#!/usr/bin/env bash
# The GPU suite in one go: the GPU tests, then the GPU, actor and transport benchmarks.
# Meant for the lent GPU machines: run from the repository root; results go to $OUT
# (or ./gpu-results). Wheels in .whl/ (pydantic, tblib, pytest...) are installed first
# when the machine's python lacks them; nothing is fetched from a network.
set -uo pipefail
out="${OUT:-gpu-results}"
mkdir -p "$out"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
# The compiled ring core, built in place for this machine's python (a checkout carries
# no binaries); without it the slower pure-Python core runs, and the line below says so.
python3 setup.py -q build_ext --inplace > "$out/build.txt" 2>&1 || cat "$out/build.txt"
python3 -c "from torchtroupe.transport.core import IMPLEMENTATION; print('ring core:', IMPLEMENTATION)" \
  | tee "$out/core.txt"
quick="${QUICK:+--quick}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpus.txt"
python3 -m pytest tests/gpu -v -p no:cacheprovider -o addopts="" --timeout 300 2>&1 | tee "$out/gpu-tests.txt"
status=${PIPESTATUS[0]}
python3 -m bench.gpu $quick --no-doc --markdown-out "$out/gpu.md" 2>&1 | tail -n 60
python3 -m bench.actors --quick --no-doc --ranks 1,2,4,8 > "$out/actors.md" 2>&1 || true
python3 -m bench.transport --quick --no-doc > "$out/transport.md" 2>&1 || true
python3 -m bench.supervision --quick --no-doc > "$out/supervision.md" 2>&1 || true
exit "$status"
