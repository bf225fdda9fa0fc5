#!/usr/bin/env bash
# The measurement, old code and new, each started twice (the second start finds
# its tokenizer / prepared corpus cached): wall and peak resident memory of a 5-update fit.
set -u
source /work/main/.venv/bin/activate
export NARGEN_DATA=/work/shared/data/multi30k
for n in "$@"; do
  corpus=/work/main/runs/scale_data/corpus-$n
  for code in old main; do
    for attempt in 1 2; do
      rm -rf /tmp/ba-run
      cd /work/$code
      /usr/bin/time -v python -m nargen.cli.main fit --config recipes/multi30k/ar_tiny.yaml --trainer.max_steps 5 \
        --trainer.max_time_minutes 0 --eval.decodes '[]' --eval.latency_sentences 0 --trainer.run_dir /tmp/ba-run \
        --data.root $corpus --data.cache_dir /tmp/ba-cache-$code-$n > /tmp/ba-$code-$n-$attempt.out 2> /tmp/ba-$code-$n-$attempt.err
      wall=$(grep "Elapsed (wall" /tmp/ba-$code-$n-$attempt.err | awk '{print $NF}')
      rss=$(grep "Maximum resident" /tmp/ba-$code-$n-$attempt.err | awk '{print $NF}')
      first=$(grep -o '"seconds_to_first_update": [0-9.]*' /tmp/ba-$code-$n-$attempt.out | awk '{print $2}')
      echo "$n $code start$attempt wall=$wall peak_rss_kib=$rss first_update_s=${first:-n/a}"
    done
  done
done
