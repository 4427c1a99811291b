#!/usr/bin/env bash
# Training throughput (tokens/s) and MFU of GPT-2 124M, BERT-base and the Llama-3.2-1B shape on whatever GPU this
# machine has.
#
#   benchmarks/gpu.sh                     # every GPU found (DDP through launch/local.sh when more than one)
#   STEPS=60 NPROC=1 benchmarks/gpu.sh    # longer, one GPU
#   SMOKE=1 benchmarks/gpu.sh             # CPU, tiny models: checks the script itself, no meaningful figures
#
# Each model trains STEPS optimizer steps with the settings of experiment=gpt2_124m (bf16-mixed, compile, fused AdamW,
# flash SDPA, TF32) on the bundled Tiny Shakespeare, no gradient accumulation (one micro-batch per step, so every
# logged window is a steady-state step), and the real vocabularies' sizes (50304, 30522, 128256; llama3_1b at a
# 2048-token context, FSDP when NPROC > 1, activation checkpointing with ACT_CKPT=1). MFU: the PaLM formula
# against the GPU's dense bf16 peak (gptframe/training/throughput.py). Results: a markdown table on stdout and
# $OUT/gpu.json (OUT defaults to benchmarks/results).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[[ -x "$PY" ]] || PY=python3
BIN=$(dirname "$PY")
STEPS=${STEPS:-40}
WORK=${WORK:-$(mktemp -d /tmp/gptframe-gpu-bench.XXXXXX)}
OUT=${OUT:-$([[ -n "${SMOKE:-}" ]] && echo "$WORK" || echo benchmarks/results)}  # smoke figures are not results
mkdir -p "$OUT"

if [[ -n "${SMOKE:-}" ]]; then
    NPROC=${NPROC:-1}
    common=(trainer.accelerator=cpu trainer.precision=32 trainer.compile=false)
    gpt_size=(model.n_layer=2 model.n_head=2 model.n_embd=64 model.block_size=64 data.batch_size=4)
    bert_size=(model.num_hidden_layers=2 model.num_attention_heads=2 model.hidden_size=64 model.intermediate_size=128
               model.max_position_embeddings=64 task.max_seq_len=64 data.batch_size=4)
    llama_size=(model.n_layer=2 model.n_head=4 model.n_kv_head=2 model.n_embd=64 model.intermediate_size=128
                model.block_size=64 model.vocab_size=4096 data.batch_size=4)
    STEPS=${SMOKE_STEPS:-12}
else
    if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
        echo "gpu.sh: no NVIDIA GPU found (nvidia-smi -L failed); SMOKE=1 runs the script on CPU" >&2
        exit 1
    fi
    NPROC=${NPROC:-$(nvidia-smi -L | grep -c '^GPU')}
    common=(trainer.precision=bf16-mixed trainer.compile=true)
    gpt_size=(data.batch_size=${GPT_BATCH:-16})
    bert_size=(task.max_seq_len=512 data.batch_size=${BERT_BATCH:-32})
    llama_size=(data.batch_size=${LLAMA_BATCH:-4} trainer.activation_checkpointing=$([[ -n "${ACT_CKPT:-}" ]] && echo true || echo false))
    [[ $NPROC -gt 1 ]] && llama_size+=(trainer=fsdp)
fi

shared=(data=shakespeare data.val_fraction=0.1 "data.cache_dir=$WORK/cache" trainer.max_steps="$STEPS" trainer.global_batch_tokens=null
        trainer.accumulate_grad_batches=1 trainer.val_check_interval=100000 trainer.final_eval_batches=2
        trainer.log_every_n_steps=5 trainer.enable_progress_bar=false trainer.checkpoint_every_n_steps=null
        task.warmup_steps=10)

run() {  # name, then overrides
    local name=$1; shift
    echo "== $name: $NPROC process(es), $STEPS steps" >&2
    PATH="$BIN:$PATH" NPROC=$NPROC launch/local.sh "$@" "${common[@]}" "${shared[@]}" "hydra.run.dir=$WORK/$name" \
        > "$WORK/$name.log" 2>&1 || { tail -30 "$WORK/$name.log" >&2; exit 1; }
}

run gpt2_124m experiment=gpt2_124m tokenizer.vocab_size=4096 model.vocab_size=50304 "${gpt_size[@]}"
run bert_base model=bert_base task=mlm tokenizer=wordpiece tokenizer.vocab_size=4096 model.vocab_size=30522 \
    "${bert_size[@]}"

run llama3_1b model=llama3_1b tokenizer.vocab_size=4096 "${llama_size[@]}"

"$PY" benchmarks/gpu_report.py "$WORK/gpt2_124m" "$WORK/bert_base" "$WORK/llama3_1b" --json "$OUT/gpu.json"
