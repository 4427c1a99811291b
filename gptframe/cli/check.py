"""python -m gptframe.cli.check LABEL [OVERRIDES...]: check a gptframe-train config without running anything.

launch/pipeline.sh checks both training stages' overrides with it before its first stage, so a typo in
`finetune.trainer.max_epocs=3` fails at once (one line, exit code 2) instead of after pretraining, and leaves no
pipeline dir behind. The same checks as gptframe-train's start-up: Hydra composition, types, value checks.
"""

from __future__ import annotations

import sys

from gptframe.cli.common import one_line_error, user_errors_exit


def check_overrides(overrides: list[str]) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from gptframe.cli.common import config_dir
    from gptframe.config import register_configs, to_typed
    from gptframe.errors import ConfigError

    register_configs()
    job = [o for o in overrides if not o.startswith(("hydra.", "hydra/"))]  # Hydra's own settings: its business
    try:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = compose(config_name="train", overrides=job)
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(one_line_error(e)) from None
    to_typed(cfg)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    label, overrides = (argv[0], argv[1:]) if argv else ("gptframe.cli.check", [])
    with user_errors_exit(label):
        check_overrides(overrides)


if __name__ == "__main__":
    main()
