#!/usr/bin/env bash
# Speculative decoding on one CUDA device, in one run, over the rows of
# recipes/multi30k/bench/speculative_tiny.yaml whose checkpoints are here, in three bench
# runs, each written to OUT_DIR as soon as it ends: the core rows in fp32 (greedy,
# beam 4, greedy compiled, the feature-level drafter's chain and trees and the SpecDec
# drafter, eager and compiled), where the output must be greedy's; a few of them in
# bf16; then every row in fp32 (the longest; a time limit may cut it). Checkpoints
# slimmed for the journey (benchmarks/slim_checkpoints.py, under runs/slim) are
# restored first.
#
#   benchmarks/gpu_speculative.sh OUT_DIR
#   env: LATENCY (sentences timed at batch 1, default 100), CORE, BF16, ALL (--systems
#        regexes of the three runs; an empty one skips its run)
set -u
out=$(realpath -m "${1:?usage: benchmarks/gpu_speculative.sh OUT_DIR}")
mkdir -p "$out"
stage() { echo "== $(date -u +%H:%M:%S) $*"; }
spec=recipes/multi30k/bench/speculative_tiny.yaml
target=runs/ar_tiny/checkpoints/averaged.ckpt

stage environment
python3 - <<'PY' | tee "$out/environment.txt"
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda)
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(), "tf32 matmul", torch.backends.cuda.matmul.allow_tf32)
PY

if [ -d runs/slim ]; then
    stage "restore the slimmed checkpoints"
    python3 benchmarks/slim_checkpoints.py restore "$target" runs/slim 2>&1 | tee "$out/restore.log"
fi

bench() {  # name dtype regex
    [ -n "$3" ] || return 0
    stage "bench $1 ($2)"
    nargen bench systems --spec "$spec" --out "$out/$1" --dtype "$2" --skip_missing \
        --latency_sentences "${LATENCY:-100}" --systems "$3" > "$out/$1.log" 2>&1
    echo "exit $?"
    cat "$out/$1/bench.md" 2>/dev/null
}
teacher='^AR teacher (greedy|beam 4|greedy compiled'
bench core fp32 "${CORE-$teacher|eagle (chain k=4|tree k=6 width 4 nodes 16|tree k=6 width 5 nodes 32)( compiled)?|SpecDec drafter k=8( compiled)?|speculative \(AR drafter k=4\))\$}"
bench bf16 bf16 "${BF16-$teacher|eagle tree k=6 width 4 nodes 16( compiled)?)\$}"
bench all fp32 "${ALL-.}"
stage done
