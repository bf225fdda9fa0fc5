#!/bin/bash
# Decoding overhead, one tree at a time (run from the project root):
#   bench_systems.sh TREE OUT [more --system/--option arguments]
# TREE: a checkout whose nargen is measured (git worktree add /tmp/before e7a22f2 for
# the figures "before"); benchmarks/decode_overhead.py comes from this checkout.
# Checkpoints: runs/ar_tiny (the 30-minute recipe); CTC+GLAT and CMLM students from the
# teacher's core, 4 minutes each on distilled data (timing only):
#   nargen fit --config recipes/multi30k/ctc_glat_tiny_distilled_from_ar.yaml \
#     --trainer.run_dir runs/speed/ctc_glat_tiny_distilled_from_ar --trainer.max_epochs null \
#     --trainer.max_time_minutes 4 --trainer.val_every_steps 1000000 --eval.decodes '[]'
#   (the same for cmlm_tiny_distilled_from_ar)
tree=$1; out=$2; shift 2
AR=runs/ar_tiny/checkpoints/best.ckpt
CTC=runs/speed/ctc_glat_tiny_distilled_from_ar/checkpoints/best.ckpt
CMLM=runs/speed/cmlm_tiny_distilled_from_ar/checkpoints/best.ckpt
PYTHONPATH=$tree .venv/bin/python benchmarks/decode_overhead.py --src "$NARGEN_DATA/test_2016_flickr.de.gz" \
  --system "ar greedy=$AR" --system "ar beam 4=$AR" --option "ar beam 4" beam=4 \
  --system "ctc_glat=$CTC" --system "cmlm T=10=$CMLM" --option "cmlm T=10" iterations=10 \
  --system "speculative ctc k=8=$AR" --option "speculative ctc k=8" draft=$CTC --option "speculative ctc k=8" block=8 \
  "$@" > "$out"
# after, the compiled rows:
#   bench_systems.sh . after.jsonl --system "ar greedy compiled=$AR" --option "ar greedy compiled" compile=true ...
