"""gptframe-train: compose the config with Hydra, then run one training job in its run dir."""

from __future__ import annotations

import os
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from gptframe.cli.common import add_file_log, config_dir, run_hydra_cli, tidy_lightning_logging, user_errors_exit
from gptframe.config import register_configs, to_typed

register_configs()


def global_rank() -> int:
    """This process's rank as torchrun or srun set it (0 when nothing launched several processes)."""
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))


def export_submitit_local_ranks(env=os.environ) -> None:
    """hydra/launcher=local with tasks_per_node > 1: submitit, not Lightning, started this job's processes. Give each
    the variables torchrun would (Lightning and torch.distributed read them). On SLURM (hydra/launcher=slurm) srun's
    own variables do that job through Lightning's SLURMEnvironment, so nothing is set there."""
    if env.get("SUBMITIT_EXECUTOR") != "local":
        return
    import submitit

    job = submitit.JobEnvironment()
    if job.num_tasks < 2:
        return
    env.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(10000 + int(job.job_id) % 20000),  # the same in every task of the job; below the ephemeral range
        WORLD_SIZE=str(job.num_tasks),
        RANK=str(job.global_rank),
        LOCAL_RANK=str(job.local_rank),
        LOCAL_WORLD_SIZE=str(job.num_tasks // job.num_nodes),
        NODE_RANK=str(job.node),
    )


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def hydra_main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    with user_errors_exit("gptframe-train", run_dir):
        if os.environ.get("SLURM_JOB_ID"):  # before anything slow: SLURM's requeue signal would otherwise kill us
            from gptframe.training.requeue import install_signal_flag

            install_signal_flag()
        export_submitit_local_ranks()
        typed = to_typed(cfg)
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from gptframe.training.run import run_training  # heavy imports after the config is known to be valid

        tidy_lightning_logging()
        if global_rank() == 0:  # one log file per run; the other ranks' output goes to their launcher's stderr
            add_file_log(run_dir, "train.log")
        run_training(typed, run_dir, cfg)
        shut_down_process_group()


def shut_down_process_group() -> None:
    """Leave the process group together and explicitly. A rank that finishes first (the others write no summary) and
    exits with its gloo/NCCL group still alive can abort in the group's destructor ("terminate called without an
    active exception", exit -6) while rank 0 is still talking to it."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def main() -> None:
    run_hydra_cli("gptframe-train", hydra_main)  # trust (issue 11): Hydra's own errors as one line, exit code 2


if __name__ == "__main__":
    main()
