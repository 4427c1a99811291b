#!/usr/bin/env bash
# One node, N processes: torchrun starts one gptframe-train rank per GPU (trainer=ddp unless you pick trainer=fsdp).
#
#   launch/local.sh model=gpt2_124m                       # every GPU on this machine, DDP
#   NPROC=4 launch/local.sh trainer=fsdp model=gpt2_medium
#   NPROC=2 launch/local.sh trainer.accelerator=cpu ...    # CPU processes (gloo), as the tests do
#
# NPROC: processes (default: the number of GPUs, else 1). trainer.devices / trainer.num_nodes are "auto" in
# trainer=ddp|fsdp and take torchrun's numbers. Extra torchrun flags: TORCHRUN_ARGS="--max-restarts=3".
set -euo pipefail

if [[ -z "${NPROC:-}" ]]; then
    NPROC=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
    [[ "$NPROC" -ge 1 ]] || NPROC=1
fi

# a trainer given on the command line wins; Hydra refuses the same group twice
trainer=(trainer=ddp)
for arg in "$@"; do [[ "$arg" == trainer=* ]] && trainer=(); done

# A fresh rendezvous store for each restart (--max-restarts): torch 2.13 shares one store across restarts by
# default, where a restarted rank can read a dead rank's address and fail, or hang, connecting its process group.
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE="${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}"

exec "${TORCHRUN:-torchrun}" --standalone --nproc-per-node="$NPROC" ${TORCHRUN_ARGS:-} \
    -m gptframe.cli.train "${trainer[@]}" "$@"
