#!/usr/bin/env bash
# Position schemes on Multi30K de-en (2-core CPU): three autoregressive ar_tiny models
# (rotary, absolute, rotary with a 16-position window) for 400 updates, a CTC+GLAT
# student initialised from each (150 updates on the distilled data), BLEU on test inputs
# made of 1, 2, 4 and 8 joined sentences; then the synthetic copy task and the cost at
# length. Run from the repository root with NARGEN_DATA set.
set -eu
out=${1:-runs/len}
declare -A extra=(
  [rope]=""
  [absolute]=", rotary_positions: false, absolute_positions: true"
  [window]=", encoder_window: 16, decoder_window: 16"
)
for scheme in rope absolute window; do
  ar_model="{preset: tiny, dropout: 0.1, max_len: 1024${extra[$scheme]}}"
  nargen fit --config recipes/multi30k/ar_tiny.yaml --model "$ar_model" --trainer.run_dir $out/ar_$scheme \
    --trainer.max_time_minutes 0 --trainer.max_steps 400 --optim.warmup_steps 150 \
    --eval.average_best 0 --eval.decodes '[{beam: 1}]' --eval.latency_sentences 0 > $out/ar_$scheme.log 2>&1
  ctc_model="{preset: tiny, dropout: 0.1, max_len: 1024, absolute_positions: true${extra[$scheme]}}"
  ctc_model=${ctc_model/absolute_positions: true, rotary_positions: false, absolute_positions: true/rotary_positions: false, absolute_positions: true}
  nargen fit --config recipes/multi30k/ctc_glat_tiny_distilled_from_ar.yaml --model "$ctc_model" \
    --trainer.run_dir $out/ctc_$scheme --trainer.init_from $out/ar_$scheme/checkpoints/best.ckpt \
    --trainer.max_time_minutes 0 --trainer.max_steps 150 --optim.warmup_steps 50 \
    --eval.decodes '[{beam: 1}]' --eval.latency_sentences 0 > $out/ctc_$scheme.log 2>&1
done
args=()
for family in ar ctc; do for scheme in rope absolute window; do
  args+=(--ckpt "$family $scheme=$out/${family}_$scheme/checkpoints/best.ckpt")
done; done
python benchmarks/length_generalization.py "${args[@]}" --out $out/length_generalization.json > $out/length_generalization.md
python benchmarks/synthetic_length.py --out $out/synthetic > $out/synthetic.md
python benchmarks/long_inputs.py --out $out/cost > $out/cost.md
