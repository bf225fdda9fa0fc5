#!/usr/bin/env bash
# The GPU path, checked on one CUDA device in one run:
#   1. the CUDA tests (bf16 autocast runs a fused attention kernel, never the math
#      fallback) and the decoders' host-read counts;
#   2. each base recipe trained for FIT_MINUTES under bf16 autocast, its fit summary
#      (target tokens/s, MFU, peak memory) kept; ar_base once more with the training
#      step compiled (trainer.compile);
#   3. the GPU bench spec over those models in bf16: AR greedy and beam 4, eager and
#      compiled (CUDA graphs), CTC+GLAT, CMLM T=4/10, speculative with the CTC+GLAT
#      drafter (recipes/multi30k/bench/gpu_check.yaml);
#   4. the whole test suite with a GPU present (CLI paths pick the GPU by default).
# Each stage's results are packed into OUT_DIR/gpu_check.tgz as soon as it ends, so a
# run stopped early keeps what it finished.
#
#   benchmarks/gpu_check.sh OUT_DIR [RECIPE ...]  (default: ar_base ctc_glat_base cmlm_base)
#   env: FIT_MINUTES (default 0.75), SUITE_SECONDS (default 150; 0 skips the suite),
#        BENCH_SPEC (default recipes/multi30k/bench/gpu_check.yaml)
set -u
out=$(realpath -m "${1:?usage: benchmarks/gpu_check.sh OUT_DIR [RECIPE ...]}")
shift
recipes=("${@:-ar_base ctc_glat_base cmlm_base}")
read -r -a recipes <<< "${recipes[*]}"
work="$out/gpu_check"
mkdir -p "$work"
pack() { tar czf "$out/gpu_check.tgz" -C "$out" gpu_check; }
stage() { echo "== $(date -u +%H:%M:%S) $*"; }

stage environment
python3 - <<'EOF' | tee "$work/environment.txt"
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda)
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(), "bf16", torch.cuda.is_bf16_supported())
    print("flash sdp", torch.backends.cuda.flash_sdp_enabled(),
          "mem-efficient sdp", torch.backends.cuda.mem_efficient_sdp_enabled(),
          "tf32 matmul", torch.backends.cuda.matmul.allow_tf32)
EOF
pack

stage CUDA tests
python3 -m pytest -q -p no:cacheprovider tests/test_attention.py tests/test_host_reads.py tests/test_compiled.py 2>&1 | tee "$work/pytest_attention.log"
pack

for recipe in "${recipes[@]}"; do
    stage "fit $recipe for ${FIT_MINUTES:-0.75} min"
    nargen fit --config "recipes/multi30k/$recipe.yaml" --trainer.run_dir "runs/gpu_check/$recipe" \
        --trainer.fresh true --trainer.max_epochs null --trainer.max_time_minutes "${FIT_MINUTES:-0.75}" \
        --trainer.val_every_steps 1000000 --trainer.progress_bar false --eval.decodes '[]' \
        > "$work/fit_$recipe.log" 2>&1
    echo "exit $?"
    cp "runs/gpu_check/$recipe/summary.json" "$work/fit_$recipe.json" 2>/dev/null && cat "$work/fit_$recipe.json"
    pack
done

stage "fit ar_base, training step compiled, for ${FIT_MINUTES:-0.75} min"
nargen fit --config recipes/multi30k/ar_base.yaml --trainer.run_dir runs/gpu_check/ar_base_compiled \
    --trainer.fresh true --trainer.max_epochs null --trainer.max_time_minutes "${FIT_MINUTES:-0.75}" \
    --trainer.val_every_steps 1000000 --trainer.progress_bar false --eval.decodes '[]' --trainer.compile true \
    > "$work/fit_ar_base_compiled.log" 2>&1
echo "exit $?"
cp runs/gpu_check/ar_base_compiled/summary.json "$work/fit_ar_base_compiled.json" 2>/dev/null && cat "$work/fit_ar_base_compiled.json"
pack

spec=${BENCH_SPEC:-recipes/multi30k/bench/gpu_check.yaml}
stage "bench $spec"
nargen bench systems --spec "$spec" --out "$work/bench" --latency_sentences 200 --skip_missing \
    > "$work/bench.log" 2>&1
echo "exit $?"
cat "$work/bench/bench.md" 2>/dev/null
pack

if [ "${SUITE_SECONDS:-150}" -gt 0 ]; then
    stage "test suite (${SUITE_SECONDS:-150} s at most)"
    workers=$(python3 -c "import xdist" 2>/dev/null && echo "-n 8")
    timeout "${SUITE_SECONDS:-150}" python3 -m pytest -q -p no:cacheprovider $workers -m "not slow" \
        > "$work/pytest_suite.log" 2>&1
    echo "exit $?"
    tail -30 "$work/pytest_suite.log"
    pack
fi
stage done
