#!/usr/bin/env bash
# Pretraining followed by fine-tuning, one stage after another under one pipeline dir:
#
#   launch/pipeline.sh RECIPE [overrides...]      RECIPE: a conf/pipeline/<name>.yaml (gpt, llama, bert, gpt_sft)
#
# Stages (each consumes the previous stage's outputs):
#   data      `python -m <recipe's data module> DIR` (default data_pipelines.downstream.shakespeare_speakers: the
#             speaker task's train/val passages, and a pretraining corpus without the val passages)
#   pretrain  gptframe-train with the recipe's pretraining overrides (task=clm or task=mlm) on that corpus
#   finetune  gptframe-train model.init_from=<pretrain checkpoint> with the recipe's finetune overrides (its task) and
#             finetune_data (default: the speaker task's train/val.jsonl; {data} stands for the data dir)
#   export    gptframe-export of both checkpoints to Hugging Face directories
#   evaluate  the fine-tuned metrics (accuracy against the majority baseline, or the response val loss), and the
#             recipe's sample: text-generation or fill-mask from the exported pretrained model, or chat (answers of
#             the exported fine-tuned model to the val questions)
#
# Overrides: `pretrain.KEY=VALUE` goes to the pretraining stage, `finetune.KEY=VALUE` to fine-tuning, a plain
# `KEY=VALUE` to both (e.g. trainer.accelerator=cpu); `pipeline.dir=PATH` picks the pipeline dir
# (default outputs/pipeline-RECIPE). A re-run skips the stages that completed with the same overrides and resumes
# an interrupted one (resume=auto); a stage whose overrides changed runs again, continuing its checkpoint.
#
# GPTFRAME_LAUNCHER: a command prefix for the two training stages only ("srun --kill-on-bad-exit=1" in
# launch/slurm/pipeline.sbatch); data preparation, export and evaluation run once, in this shell. It is not part of a
# stage's record: a stage done under one launcher counts as done under another.
set -euo pipefail
read -ra launcher <<<"${GPTFRAME_LAUNCHER:-}"

recipes_dir="$(cd "$(dirname "$0")/.." && pwd)/conf/pipeline"
recipes() { local f names=(); for f in "$recipes_dir"/*.yaml; do names+=("$(basename "$f" .yaml)"); done; echo "${names[*]}"; }
usage() { echo "usage: $0 {$(recipes | tr ' ' '|')} [pretrain.KEY=V] [finetune.KEY=V] [KEY=V] [pipeline.dir=PATH]" >&2; exit 2; }
[[ $# -ge 1 ]] || usage
arch=$1; shift
recipe="$recipes_dir/$arch.yaml"
[[ $arch != */* && -f $recipe ]] || { echo "pipeline: unknown recipe '$arch' (expected one of: $(recipes))" >&2; usage; }

dir="outputs/pipeline-$arch"
pretrain_args=() finetune_args=() common_args=()
for arg in "$@"; do
  case "$arg" in
    pipeline.dir=*) dir=${arg#pipeline.dir=} ;;
    pretrain.*=*) pretrain_args+=("${arg#pretrain.}") ;;
    finetune.*=*) finetune_args+=("${arg#finetune.}") ;;
    *=*) common_args+=("$arg") ;;
    *) echo "pipeline: '$arg' is not KEY=VALUE" >&2; usage ;;
  esac
done

# recipe_field KEY [DEFAULT...]: the recipe's KEY (else the DEFAULT items), one item per line (a list's items, or the
# value); {data} in an item becomes the data stage's dir
recipe_field() {
  python - "$recipe" "$task_dir" "$@" <<'EOF'
import sys, yaml
recipe, data, key, default = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
value = (yaml.safe_load(open(recipe)) or {}).get(key)
if value is None and not default:
    sys.exit(f"pipeline: {recipe} has no {key!r} entry")
items = default if value is None else value if isinstance(value, list) else [value]
print("\n".join(str(item).replace("{data}", data) for item in items))
EOF
}

dir=$(python -c 'import os, sys; print(os.path.abspath(sys.argv[1]))' "$dir")
task_dir="$dir/data" pretrain_dir="$dir/pretrain" finetune_dir="$dir/finetune" export_dir="$dir/export"

pretrain_recipe=() finetune_recipe=() finetune_data=()
while IFS= read -r item; do pretrain_recipe+=("$item"); done < <(recipe_field pretrain)
while IFS= read -r item; do finetune_recipe+=("$item"); done < <(recipe_field finetune)
while IFS= read -r item; do finetune_data+=("$item"); done < <(
  recipe_field finetune_data "data.train_path={data}/train.jsonl" "data.val_path={data}/val.jsonl")
data_module=$(recipe_field data data_pipelines.downstream.shakespeare_speakers)
sample=$(recipe_field sample)
[[ ${#pretrain_recipe[@]} -gt 0 && ${#finetune_recipe[@]} -gt 0 ]] || { echo "pipeline: $recipe needs pretrain and finetune lists" >&2; exit 2; }

# Bad overrides stop here, before any stage runs or the pipeline dir exists: one line, exit code 2.
python -m gptframe.cli.check "pipeline: pretrain" "${pretrain_recipe[@]}" "${common_args[@]}" "${pretrain_args[@]}"
python -m gptframe.cli.check "pipeline: finetune" "${finetune_recipe[@]}" "${common_args[@]}" \
  "${finetune_args[@]}"

mkdir -p "$dir"
log() { echo "[pipeline $arch] $*" >&2; }

# run_stage NAME DONE_FILE DOWNSTREAM COMMAND...: skipped when DONE_FILE records the same command. Otherwise it runs
# (resuming its own checkpoint), and the DOWNSTREAM dirs (space-separated), built from its old outputs, are removed.
run_stage() {
  local name=$1 done_file=$2 downstream=$3; shift 3
  local signature; signature=$(printf '%q ' "$@")
  if [[ -f $done_file && "$(cat "$done_file")" == "$signature" ]]; then
    log "$name: done already, skipping ($done_file)"
    return
  fi
  for stale in $downstream; do
    if [[ -e $stale ]]; then log "$name: changed, removing $stale"; rm -rf "$stale"; fi
  done
  if [[ $1 == gptframe-train ]]; then
    log "$name: ${launcher[*]:+${launcher[*]} }$signature"
    "${launcher[@]}" "$@"
  else
    log "$name: $signature"
    "$@"
  fi
  mkdir -p "$(dirname "$done_file")"
  printf '%s' "$signature" > "$done_file.tmp" && mv "$done_file.tmp" "$done_file"
}

run_stage data "$task_dir/.stage-done" "$pretrain_dir $finetune_dir $export_dir" \
  python -m "$data_module" "$task_dir"

run_stage pretrain "$pretrain_dir/.stage-done" "$finetune_dir $export_dir" \
  gptframe-train name="pipeline-$arch-pretrain" hydra.run.dir="$pretrain_dir" resume=auto \
  data.path="$task_dir/pretrain.txt" "${pretrain_recipe[@]}" "${common_args[@]}" "${pretrain_args[@]}"

run_stage finetune "$finetune_dir/.stage-done" "$export_dir/finetuned $export_dir/.finetuned-done" \
  gptframe-train name="pipeline-$arch-finetune" hydra.run.dir="$finetune_dir" resume=auto \
  model.init_from="$pretrain_dir/checkpoints/last.ckpt" "${finetune_data[@]}" \
  "${finetune_recipe[@]}" "${common_args[@]}" "${finetune_args[@]}"

best_finetuned=$(python -c 'import json,sys; s=json.load(open(sys.argv[1])); print(s["best_checkpoint"] or s["checkpoint"])' \
  "$finetune_dir/summary.json")
run_stage export-pretrained "$export_dir/.pretrained-done" "" \
  gptframe-export ckpt="$pretrain_dir/checkpoints/last.ckpt" out="$export_dir/pretrained" overwrite=true
run_stage export-finetuned "$export_dir/.finetuned-done" "" \
  gptframe-export ckpt="$best_finetuned" out="$export_dir/finetuned" overwrite=true

# evaluate: always runs (seconds), prints the result table and a sample from the exported models
python - "$task_dir/stats.json" "$pretrain_dir/summary.json" "$finetune_dir/summary.json" "$dir/results.json" <<'EOF'
import json, sys
stats, pre, fine = (json.load(open(p)) for p in sys.argv[1:4])
result = {"pretrain_val_loss": pre["val_loss"], "pretrain_steps": pre["step"], "finetune_task": fine["task"],
          "finetune_val_loss": fine["val_loss"], "num_val": stats["num_val"]}
if "val_accuracy" in fine:  # a classifier
    result.update({
        "finetune_val_accuracy": fine["val_accuracy"], "finetune_best_val_accuracy": fine.get("best_val_accuracy"),
        "finetune_val_f1": fine["val_f1"], "majority_baseline_accuracy": stats["majority_baseline_accuracy"],
        "num_labels": len(stats["speakers"]),
    })
    print(f"speaker classification ({result['num_labels']} speakers, {result['num_val']} val passages): "
          f"accuracy {fine['val_accuracy']:.3f} (best {fine.get('best_val_accuracy') or 0:.3f}), "
          f"macro-F1 {fine['val_f1']:.3f}; majority baseline {stats['majority_baseline_accuracy']:.3f}")
else:
    print(f"{fine['task']} fine-tuning: val loss {fine['val_loss']:.3f} after {fine['step']} steps")
json.dump(result, open(sys.argv[4], "w"), indent=2)
EOF
case "$sample" in
  text-generation) gptframe-generate ckpt="$export_dir/pretrained" prompt="ROMEO:" max_new_tokens=120 seed=1337 ;;
  fill-mask) python - "$export_dir/pretrained" <<'EOF'
import sys
import gptframe
fill = gptframe.pipeline("fill-mask", model=sys.argv[1])
for text in ("the king is [MASK] .", "what say you , my [MASK] ?"):
    top = fill(text, top_k=3)
    print(text, "->", ", ".join(f"{r['token_str']} ({r['score']:.2f})" for r in top))
EOF
  ;;
  chat) python - "$export_dir/finetuned" "$task_dir" "$dir/results.json" <<'EOF'
import json, sys
from pathlib import Path
import gptframe
from data_pipelines.sft import read_conversations
chat = gptframe.pipeline("text-generation", model=sys.argv[1])
val = read_conversations(Path(sys.argv[2]) / "instructions_val.jsonl")
answers = [a[0]["generated_text"] for a in chat([c.messages[:-1] for c in val], max_new_tokens=12, return_full_text=False)]
correct = [a.strip() == c.messages[-1]["content"] for a, c in zip(answers, val)]
for c, a in list(zip(val, answers))[:3]:
    print(f"user: {c.messages[0]['content']!r}\n  answer: {a!r} (expected {c.messages[-1]['content']!r})")
print(f"answers: {sum(correct)}/{len(val)} val questions answered exactly ({sum(correct) / len(val):.3f})")
results = json.loads(Path(sys.argv[3]).read_text())
results["chat_exact_match"] = sum(correct) / len(val)
Path(sys.argv[3]).write_text(json.dumps(results, indent=2))
EOF
  ;;
  *) echo "pipeline: $recipe: unknown sample '$sample' (text-generation, fill-mask or chat)" >&2; exit 2 ;;
esac
log "done: $dir (results.json, export/)"
