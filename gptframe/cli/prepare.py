"""gptframe-prepare: build the tokenizer and the token shards only (same config tree as gptframe-train)."""

from __future__ import annotations

import json

import hydra
from omegaconf import DictConfig

from gptframe.cli.common import config_dir, run_hydra_cli, user_errors_exit
from gptframe.config import register_configs, to_typed

register_configs()


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="prepare")
def hydra_main(cfg: DictConfig) -> None:
    with user_errors_exit("gptframe-prepare"):
        typed = to_typed(cfg)
        from data_pipelines.prepare import prepare

        tokenizer, prepared = prepare(typed.data, typed.tokenizer)
        print(json.dumps({"tokenizer": tokenizer.identity(), "data": str(prepared.directory), **prepared.index}, indent=1))


def main() -> None:
    run_hydra_cli("gptframe-prepare", hydra_main)  # trust (issue 11): Hydra's own errors as one line, exit code 2


if __name__ == "__main__":
    main()
