#!/usr/bin/env bash
# Several nodes without SLURM: run this once on every node, with the same overrides and its own NODE_RANK.
#
#   # on node 0 (10.0.0.1) and node 1:
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 launch/multinode.sh model=gpt2_124m hydra.run.dir=/shared/runs/gpt2
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 launch/multinode.sh model=gpt2_124m hydra.run.dir=/shared/runs/gpt2
#
# NNODES, NODE_RANK, MASTER_ADDR: required. MASTER_PORT: default 29500. NPROC: processes per node (default: the
# number of GPUs, else 1). The run dir must be on storage every node sees (checkpoints are written there).
# trainer=ddp unless you pick trainer=fsdp; devices and num_nodes come from torchrun.
set -euo pipefail

: "${NNODES:?set NNODES (the number of nodes)}"
: "${NODE_RANK:?set NODE_RANK (0 .. NNODES-1, this node)}"
: "${MASTER_ADDR:?set MASTER_ADDR (the address of node 0)}"
MASTER_PORT=${MASTER_PORT:-29500}
if [[ -z "${NPROC:-}" ]]; then
    NPROC=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
    [[ "$NPROC" -ge 1 ]] || NPROC=1
fi

trainer=(trainer=ddp)
for arg in "$@"; do [[ "$arg" == trainer=* ]] && trainer=(); done

exec "${TORCHRUN:-torchrun}" --nnodes="$NNODES" --node-rank="$NODE_RANK" --nproc-per-node="$NPROC" \
    --master-addr="$MASTER_ADDR" --master-port="$MASTER_PORT" ${TORCHRUN_ARGS:-} \
    -m gptframe.cli.train "${trainer[@]}" "$@"
