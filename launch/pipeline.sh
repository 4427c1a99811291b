#!/usr/bin/env bash
# Pretraining followed by fine-tuning, one stage after another under one pipeline dir:
#
#   launch/pipeline.sh RECIPE [overrides...]      RECIPE: a conf/pipeline/<name>.yaml (gpt, llama, bert)
#
# Stages (each consumes the previous stage's outputs):
#   data      the Shakespeare speaker task: train/val passages, and a pretraining corpus without the val passages
#   pretrain  gptframe-train with the recipe's pretraining overrides (task=clm or task=mlm) on that corpus
#   finetune  gptframe-train task=classification model.init_from=<pretrain checkpoint>
#   export    gptframe-export of both checkpoints to Hugging Face directories
#   evaluate  the fine-tuned accuracy against the majority baseline, and the recipe's sample (text-generation or
#             fill-mask) from the exported pretrained model
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

# recipe_field KEY: the recipe's KEY, one item per line (a list's items, or the value)
recipe_field() {
  python - "$recipe" "$1" <<'EOF'
import sys, yaml
value = (yaml.safe_load(open(sys.argv[1])) or {}).get(sys.argv[2])
if value is None:
    sys.exit(f"pipeline: {sys.argv[1]} has no {sys.argv[2]!r} entry")
print("\n".join(map(str, value if isinstance(value, list) else [value])))
EOF
}
pretrain_recipe=() finetune_recipe=()
while IFS= read -r item; do pretrain_recipe+=("$item"); done < <(recipe_field pretrain)
while IFS= read -r item; do finetune_recipe+=("$item"); done < <(recipe_field finetune)
sample=$(recipe_field sample)
[[ ${#pretrain_recipe[@]} -gt 0 && ${#finetune_recipe[@]} -gt 0 ]] || { echo "pipeline: $recipe needs pretrain and finetune lists" >&2; exit 2; }

# Bad overrides stop here, before any stage runs or the pipeline dir exists: one line, exit code 2.
python -m gptframe.cli.check "pipeline: pretrain" "${pretrain_recipe[@]}" "${common_args[@]}" "${pretrain_args[@]}"
python -m gptframe.cli.check "pipeline: finetune" task=classification "${finetune_recipe[@]}" "${common_args[@]}" \
  "${finetune_args[@]}"

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
task_dir="$dir/data" pretrain_dir="$dir/pretrain" finetune_dir="$dir/finetune" export_dir="$dir/export"
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
  python -m data_pipelines.downstream.shakespeare_speakers "$task_dir"

run_stage pretrain "$pretrain_dir/.stage-done" "$finetune_dir $export_dir" \
  gptframe-train name="pipeline-$arch-pretrain" hydra.run.dir="$pretrain_dir" resume=auto \
  data.path="$task_dir/pretrain.txt" "${pretrain_recipe[@]}" "${common_args[@]}" "${pretrain_args[@]}"

run_stage finetune "$finetune_dir/.stage-done" "$export_dir/finetuned $export_dir/.finetuned-done" \
  gptframe-train name="pipeline-$arch-finetune" hydra.run.dir="$finetune_dir" resume=auto task=classification \
  model.init_from="$pretrain_dir/checkpoints/last.ckpt" \
  data.train_path="$task_dir/train.jsonl" data.val_path="$task_dir/val.jsonl" \
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
result = {
    "pretrain_val_loss": pre["val_loss"], "pretrain_steps": pre["step"],
    "finetune_val_accuracy": fine["val_accuracy"], "finetune_best_val_accuracy": fine.get("best_val_accuracy"),
    "finetune_val_f1": fine["val_f1"], "majority_baseline_accuracy": stats["majority_baseline_accuracy"],
    "num_labels": len(stats["speakers"]), "num_val": stats["num_val"],
}
json.dump(result, open(sys.argv[4], "w"), indent=2)
print(f"speaker classification ({result['num_labels']} speakers, {result['num_val']} val passages): "
      f"accuracy {fine['val_accuracy']:.3f} (best {fine.get('best_val_accuracy') or 0:.3f}), macro-F1 {fine['val_f1']:.3f}; "
      f"majority baseline {stats['majority_baseline_accuracy']:.3f}")
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
  *) echo "pipeline: $recipe: unknown sample '$sample' (text-generation or fill-mask)" >&2; exit 2 ;;
esac
log "done: $dir (results.json, export/)"
