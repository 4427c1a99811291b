# Sourced by launch/slurm/*.sbatch: what every gptframe batch job does around its srun steps.
#
# A job of your own can do the same: `source <gptframe>/launch/slurm/common.sh; gptframe_job_start "what";
# gptframe_run_requeueable srun ... gptframe-train ...`.

# Checks, dataloader workers (cpus-per-task - 1 per rank), the requeue marker, and a log line.
gptframe_job_start() {
    : "${SLURM_JOB_ID:?submit this script with sbatch}"
    command -v gptframe-train >/dev/null || {
        echo "gptframe-train is not on PATH: activate the venv before sbatch" >&2; exit 2; }
    GPTFRAME_WORKERS=$(( ${SLURM_CPUS_PER_TASK:-1} > 1 ? SLURM_CPUS_PER_TASK - 1 : 0 ))
    # rank 0 writes this file once it has saved a checkpoint on the requeue signal (gptframe.training.requeue)
    export GPTFRAME_REQUEUE_MARKER=${GPTFRAME_REQUEUE_MARKER:-$PWD/.gptframe-requeue-$SLURM_JOB_ID}
    rm -f "$GPTFRAME_REQUEUE_MARKER"
    # SIGUSR1 is meant for the ranks; it must not end this shell (`scancel --full --signal=USR1`, `B:USR1@..`)
    trap 'echo "[$(date +%T)] batch shell: SIGUSR1 (for the ranks)"' USR1
    echo "[$(date +%T)] job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}): ${SLURM_JOB_NUM_NODES} node(s)" \
        "($SLURM_JOB_NODELIST) x ${SLURM_NTASKS_PER_NODE:-?} task(s): $*"
}

# The ranks as srun starts them: every rank gets the job's cpus-per-task (srun does not inherit it since Slurm 22.05).
GPTFRAME_SRUN=(srun --kill-on-bad-exit=1 ${SLURM_CPUS_PER_TASK:+--cpus-per-task=$SLURM_CPUS_PER_TASK})

# Run "$@"; if the ranks saved a checkpoint on the requeue signal (the marker is there), requeue the job, whatever
# the exit code (srun may report a rank it killed while the others were already gone). Requeueing only after the
# ranks exited kills nothing that is still writing. Returns the command's exit status.
gptframe_run_requeueable() {
    local status=0
    "$@" || status=$?
    if [[ -f "$GPTFRAME_REQUEUE_MARKER" ]]; then
        echo "[$(date +%T)] checkpoint saved on the requeue signal ($(cat "$GPTFRAME_REQUEUE_MARKER")):" \
            "scontrol requeue $SLURM_JOB_ID"
        rm -f "$GPTFRAME_REQUEUE_MARKER"
        scontrol requeue "$SLURM_JOB_ID"
    fi
    return $status
}
