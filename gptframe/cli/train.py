"""gptframe-train: compose the config with Hydra, then run one training job in its run dir."""

from __future__ import annotations

import os
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from gptframe.cli.common import add_file_log, config_dir, tidy_lightning_logging, user_errors_exit
from gptframe.config import register_configs, to_typed

register_configs()


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    with user_errors_exit("gptframe-train", run_dir):
        typed = to_typed(cfg)
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from gptframe.training.run import run_training  # heavy imports after the config is known to be valid

        tidy_lightning_logging()
        add_file_log(run_dir, "train.log")
        run_training(typed, run_dir, cfg)


if __name__ == "__main__":
    main()
