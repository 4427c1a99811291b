"""gptframe-prepare: build the tokenizer and the token shards only (same config tree as gptframe-train).

Started as many processes (srun in a SLURM job or array, torchrun, or RANK/WORLD_SIZE by hand), each tokenizes its
share of the shards; the last to finish writes the index and prints it.
"""

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
        from data_pipelines.prepare import prepare_rank_from_env, prepare_sources

        rank, world = prepare_rank_from_env()
        tokenizer, sources = prepare_sources(typed.data, typed.tokenizer, rank=rank, world_size=world)
        if sources is None:
            print(json.dumps({"rank": rank, "world_size": world, "status": "shards done, others still working"}))
            return
        report = {
            "rank": rank,
            "world_size": world,
            "tokenizer": tokenizer.identity(),
            "sources": {s.name: {"data": str(s.data.directory), "weight": s.weight, **s.data.index} for s in sources},
        }
        if len(sources) == 1:  # the layout of one corpus, as before mixtures
            report.update({"data": str(sources[0].data.directory), **sources[0].data.index})
        print(json.dumps(report, indent=1))


def main() -> None:
    run_hydra_cli("gptframe-prepare", hydra_main)  # trust (issue 11): Hydra's own errors as one line, exit code 2


if __name__ == "__main__":
    main()
