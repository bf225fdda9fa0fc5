#!/usr/bin/env bash
# nargen and fairseq side by side, on one machine, in one run, alternating round by round
# so that machine noise hits both: training target tokens/s over STEPS updates after
# WARMUP_STEPS, greedy batch-1 sentences/s (200 test sentences), batched beam-5 and batched
# mask-predict T=10 (length beam 1) sentences/s (1,000 test sentences), and the
# nargen/fairseq ratio of each. Training is measured in fp32 on both sides and, on a CPU
# with native bf16 matrix products, with nargen in bf16 autocast (fp32 weights; its
# default there) against the same fairseq fp32 run: fairseq 0.12 trains in fp32 on a CPU
# (its --bf16 is a TPU path that asks for an XLA device). Decoding is measured in fp32
# on both sides and, on such a CPU, with nargen's model in bf16 (`--dtype bf16`) too.
#
#   NARGEN_DATA=../shared/data/multi30k ROOT=DIR NARGEN_AR=AR.ckpt NARGEN_CMLM=CMLM.ckpt \
#       bash benchmarks/vs_fairseq.sh
#
# ROOT holds the peer (fairseq 0.12, CPU torch pinned): PEER (default
# ../shared/peer/run_peer.sh) installs it, prepares the data and trains its AR and CMLM
# models (30 minutes each) when they are missing there. Same size on both sides: 3+3
# layers, d_model 256, 4 heads, joint 8k SentencePiece, 4,096-token batches, label
# smoothing 0.1, Adam (0.9, 0.98); nargen's SwiGLU FFN (688 hidden units) has the
# parameters of fairseq's 1,024-unit ReLU FFN. fairseq's decoding speed is its own
# "Translated ... sentences/s" (model time only); nargen's is `nargen evaluate`'s, which
# also counts tokenizing and batching. nargen keeps freed memory for reuse (glibc malloc
# without mmap or trimming, `nargen.memory.keep_freed_memory`); with SAME_MALLOC=1 (the
# default) every fairseq measure is taken a second time under the same malloc settings
# (GLIBC_TUNABLES), so the table shows how much of a ratio is the allocator and how much
# the rest of the toolkit.
set -euo pipefail

HERE=$(cd "$(dirname "$0")/.." && pwd)
PEER=${PEER:-$HERE/../shared/peer/run_peer.sh}
ROOT=${ROOT:?set ROOT to a folder for the peer}
DATA=${NARGEN_DATA:?set NARGEN_DATA to the Multi30K folder}
TRAIN_ONLY=${TRAIN_ONLY:-0}    # 1: the training rows only (no checkpoints needed)
DECODE_ONLY=${DECODE_ONLY:-0}  # 1: the decoding rows only
[ "$TRAIN_ONLY" = 1 ] && [ "$DECODE_ONLY" = 1 ] && { echo "TRAIN_ONLY and DECODE_ONLY exclude each other" >&2; exit 2; }
[ "$TRAIN_ONLY" = 1 ] || NARGEN_AR=${NARGEN_AR:?set NARGEN_AR to an autoregressive checkpoint (recipes/multi30k/ar_tiny.yaml)}
CMLM=${CMLM:-1}  # CMLM=0: no mask-predict rows (no CMLM checkpoints needed on either side)
[ "$CMLM" = 0 ] || [ "$TRAIN_ONLY" = 1 ] || NARGEN_CMLM=${NARGEN_CMLM:?set NARGEN_CMLM to a CMLM checkpoint}
STEPS=${STEPS:-60} WARMUP_STEPS=${WARMUP_STEPS:-10} ROUNDS=${ROUNDS:-2} THREADS=${THREADS:-2}
SAME_MALLOC=${SAME_MALLOC:-1}
KEEP_FREED=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647  # what nargen sets itself
# the nargen bf16 training row where the CPU multiplies bf16 natively (there nargen's
# precision "auto" is bf16 autocast).
BF16=${BF16:-$(python3 -c "from nargen.training.precision import cpu_has_native_bf16 as n; print(int(n()))" 2>/dev/null || echo 0)}
NARGEN=${NARGEN:-nargen}
OUT=${OUT:-$ROOT/vs_fairseq}
export OMP_NUM_THREADS=$THREADS TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1
mkdir -p "$OUT"

[ -x "$ROOT/venv/bin/fairseq-train" ] || ROOT=$ROOT bash "$PEER" install
[ -d "$ROOT/data/bin" ] || ROOT=$ROOT bash "$PEER" prep
if [ "$TRAIN_ONLY" != 1 ]; then
  [ -f "$ROOT/ckpt/ar/checkpoint_last.pt" ] || ROOT=$ROOT bash "$PEER" train_ar
  [ "$CMLM" = 0 ] || [ -f "$ROOT/ckpt/cmlm/checkpoint_last.pt" ] || ROOT=$ROOT bash "$PEER" train_cmlm
fi
FS=$ROOT/venv/bin
TEST200=$OUT/test200
mkdir -p "$TEST200"
for l in de en; do zcat -f "$DATA/test_2016_flickr.$l"* | sed -n 1,200p > "$TEST200/test.$l"; done  # sed reads to the end: no SIGPIPE under pipefail

fairseq_train() {  # prints target tokens/s over the updates after the warm-up
  "$FS/fairseq-train" "$ROOT/data/bin" --task translation --source-lang de --target-lang en \
    --arch transformer --encoder-layers 3 --decoder-layers 3 --encoder-embed-dim 256 \
    --decoder-embed-dim 256 --encoder-ffn-embed-dim 1024 --decoder-ffn-embed-dim 1024 \
    --encoder-attention-heads 4 --decoder-attention-heads 4 --dropout 0.1 --share-all-embeddings \
    --criterion label_smoothed_cross_entropy --label-smoothing 0.1 --optimizer adam \
    --adam-betas '(0.9,0.98)' --lr 0.001 --lr-scheduler inverse_sqrt --warmup-updates 500 \
    --warmup-init-lr 1e-07 --max-tokens 4096 --max-update $((WARMUP_STEPS + STEPS)) --cpu \
    --seed 1 --log-format json --log-interval 1 --disable-validation --no-save \
    --save-dir "$OUT/fairseq_scratch" > "$OUT/fairseq_train.log" 2>&1
  python3 - "$OUT/fairseq_train.log" "$WARMUP_STEPS" <<'EOF'
import json, re, sys
tokens = seconds = 0.0
for line in open(sys.argv[1]):
    m = re.search(r"\{.*\}", line)
    if "train_inner" not in line or not m:
        continue
    record = json.loads(m.group(0))
    if int(record["num_updates"]) > int(sys.argv[2]) and float(record["wps"]) > 0:  # one update a record
        tokens += float(record["wpb"])
        seconds += float(record["wpb"]) / float(record["wps"])
print(f"{tokens / seconds:.1f}")
EOF
}

nargen_train() {  # PRECISION
  "$NARGEN" bench train "$HERE/recipes/multi30k/ar_tiny.yaml" --steps "$STEPS" \
    --warmup-steps "$WARMUP_STEPS" --trainer.threads "$THREADS" --trainer.precision "$1" \
    2> "$OUT/nargen_train.log" \
    | python3 -c 'import json, sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])["target_tokens_per_s"])'
}

fairseq_decode() {  # NAME SUBSET ARGS...: prints its sentences/s; its output stays in $OUT/fairseq_NAME.out
  local name=$1 subset=$2; shift 2
  "$FS/fairseq-generate" "$ROOT/data/bin" --source-lang de --target-lang en --gen-subset "$subset" \
    --cpu "$@" > "$OUT/fairseq_$name.out" 2>&1
  grep -o "Translated .* sentences/s" "$OUT/fairseq_$name.out" | tail -1 | grep -o "[0-9.]* sentences/s" | cut -d' ' -f1
}

nargen_decode() {  # NAME FIELD SRC REF ARGS...: prints sentences/s (batched, or batch-1 from its mean ms);
  local name=$1 field=$2 src=$3 ref=$4; shift 4   # the record (BLEU, output length) goes to $OUT/nargen_NAME.json
  "$NARGEN" evaluate --src "$src" --ref "$ref" --threads "$THREADS" --json "$@" 2> /dev/null > "$OUT/nargen_$name.json"
  nargen_rate "$name" "$field"
}

nargen_rate() {  # NAME FIELD: the sentences/s of a decode already run
  python3 -c "import json, sys; r = json.load(open(sys.argv[1])); print(r['sentences_per_s'] if sys.argv[2] == 'batched' else round(1000 / r['batch1_ms_mean'], 1))" "$OUT/nargen_$1.json" "$2"
}

printf "round\tmeasure\tfairseq\tnargen\tratio\n" | tee "$OUT/results.tsv"
row() { python3 -c "import sys; f, n = float(sys.argv[3]), float(sys.argv[4]); print(f'{sys.argv[1]}\t{sys.argv[2]}\t{f}\t{n}\t{n / f:.2f}')" "$@" | tee -a "$OUT/results.tsv"; }
fairseq_decodes() {  # SUFFIX: sets fs_greedy, fs_beam, fs_cmlm
  fs_greedy=$(fairseq_decode "greedy$1" test1 --path "$ROOT/ckpt/ar/checkpoint_last.pt" --task translation --beam 1 --batch-size 1 --required-batch-size-multiple 1)
  fs_beam=$(fairseq_decode "beam5$1" test --path "$ROOT/ckpt/ar/checkpoint_last.pt" --task translation --beam 5 --max-tokens 4096)
  fs_cmlm=""
  [ "$CMLM" = 0 ] || fs_cmlm=$(fairseq_decode "cmlm$1" test --path "$ROOT/ckpt/cmlm/checkpoint_last.pt" --task translation_lev --iter-decode-max-iter 10 --iter-decode-with-beam 1 --iter-decode-eos-penalty 0 --beam 1 --max-tokens 4096)
}

for round in $(seq 1 "$ROUNDS"); do
  if [ "$DECODE_ONLY" != 1 ]; then
    fairseq_rate=$(fairseq_train)
    [ "$SAME_MALLOC" = 1 ] && fairseq_kept=$(GLIBC_TUNABLES=$KEEP_FREED fairseq_train)
    nargen_rate=$(nargen_train 32-true)
    row "$round" "training target tokens/s, both fp32" "$fairseq_rate" "$nargen_rate"
    [ "$SAME_MALLOC" = 1 ] && row "$round" "training target tokens/s, both fp32, same malloc" "$fairseq_kept" "$nargen_rate"
    if [ "$BF16" = 1 ]; then
      row "$round" "training target tokens/s, nargen bf16" "$fairseq_rate" "$(nargen_train bf16-mixed)"
    fi
  fi
  [ "$TRAIN_ONLY" = 1 ] && continue
  if [ "$SAME_MALLOC" = 1 ]; then
    GLIBC_TUNABLES=$KEEP_FREED fairseq_decodes "_malloc_$round"
    kept_greedy=$fs_greedy kept_beam=$fs_beam kept_cmlm=$fs_cmlm
  fi
  fairseq_decodes "_$round"
  # nargen in fp32 (as fairseq), then, where the CPU multiplies bf16 natively, in bf16
  # (fairseq-generate has no bf16 path: its --fp16 casts to half, which a CPU runs slowly).
  for dtype in fp32 $([ "$BF16" = 1 ] && echo bf16); do
    tag=$([ "$dtype" = fp32 ] && echo "" || echo ", nargen $dtype")
    row "$round" "greedy batch-1 sentences/s$tag" "$fs_greedy" \
      "$(nargen_decode "greedy_${dtype}_$round" batch1 "$TEST200/test.de" "$TEST200/test.en" --ckpt "$NARGEN_AR" --beam 1 --latency-sentences 200 --dtype "$dtype")"
    row "$round" "beam 5 batched sentences/s$tag" "$fs_beam" \
      "$(nargen_decode "beam5_${dtype}_$round" batched "$DATA/test_2016_flickr.de.gz" "$DATA/test_2016_flickr.en.gz" --ckpt "$NARGEN_AR" --beam 5 --max-tokens 4096 --latency-sentences 0 --dtype "$dtype")"
    [ "$CMLM" = 0 ] || row "$round" "mask-predict T=10 batched sentences/s$tag" "$fs_cmlm" \
      "$(nargen_decode "cmlm_${dtype}_$round" batched "$DATA/test_2016_flickr.de.gz" "$DATA/test_2016_flickr.en.gz" --ckpt "$NARGEN_CMLM" --iterations 10 --length-beam 1 --max-tokens 4096 --latency-sentences 0 --dtype "$dtype")"
  done
  if [ "$SAME_MALLOC" = 1 ]; then  # the fp32 rows again, against fairseq under nargen's malloc settings
    for measure in greedy beam $([ "$CMLM" = 0 ] || echo cmlm); do
      case $measure in
        greedy) label="greedy batch-1 sentences/s" fs=$kept_greedy name=greedy_fp32 ;;
        beam) label="beam 5 batched sentences/s" fs=$kept_beam name=beam5_fp32 ;;
        cmlm) label="mask-predict T=10 batched sentences/s" fs=$kept_cmlm name=cmlm_fp32 ;;
      esac
      row "$round" "$label, same malloc" "$fs" "$(nargen_rate "${name}_$round" "$([ "$measure" = greedy ] && echo batch1 || echo batched)")"
    done
  fi
done
[ "$TRAIN_ONLY" = 1 ] && { echo "wrote $OUT/results.tsv"; exit 0; }
# the quality behind the speeds: BLEU and output length of every decode, both toolkits
# (fairseq's hypotheses detokenized with the peer's SentencePiece model, as run_peer.sh does)
for f in "$OUT"/nargen_*.json; do
  python3 -c "import json, sys; r = json.load(open(sys.argv[1])); print(sys.argv[1].rsplit('/', 1)[1], 'BLEU', r['bleu'], 'output tokens', r['mean_output_tokens'])" "$f"
done | tee "$OUT/bleu.txt"
for f in "$OUT"/fairseq_*_[0-9]*.out; do
  case $f in *greedy*) ref=$ROOT/data/raw/test200.en ;; *) ref=$ROOT/data/raw/test_2016_flickr.en ;; esac
  "$FS/python" - "$f" "$ref" "$ROOT/data/spm/spm.model" <<'EOF'
import sys, sacrebleu, sentencepiece as spm
out, ref, model = sys.argv[1:]
sp = spm.SentencePieceProcessor(model_file=model)
hyps = {}
for line in open(out):
    if line.startswith("H-"):
        key, _, pieces = line.rstrip("\n").split("\t")
        hyps[int(key[2:])] = pieces.split()
refs = [line.rstrip("\n") for line in open(ref)]
texts = [sp.decode_pieces(hyps.get(i, [])) for i in range(len(refs))]
tokens = sum(len(hyps.get(i, [])) for i in range(len(refs))) / len(refs)
print(out.rsplit("/", 1)[1], "BLEU", round(sacrebleu.corpus_bleu(texts, [refs]).score, 2), "output tokens", round(tokens, 2),
      "missing", len(refs) - len(hyps))
EOF
done | tee -a "$OUT/bleu.txt"
echo "wrote $OUT/results.tsv"
