"""What every CLI shares: where the config tree is, and turning bad input into one clear error."""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
import warnings
from pathlib import Path

from data_pipelines.errors import UserInputError


def config_dir() -> str:
    """conf/ at the repository root (editable install), or the copy a wheel carries inside the package."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise RuntimeError(f"gptframe config tree not found next to {package}")


def is_fresh_run_dir(run_dir: Path) -> bool:
    """True if the dir holds nothing but what Hydra wrote on start-up (so it is ours to remove on failure)."""
    return not run_dir.exists() or all(p.name in (".hydra",) for p in run_dir.iterdir())


@contextlib.contextmanager
def user_errors_exit(program: str, run_dir: Path | None = None):
    """Bad input -> one line on stderr, exit code 2, and no half-made run dir left behind."""
    fresh = run_dir is not None and is_fresh_run_dir(run_dir)
    try:
        yield
    except (UserInputError, FileNotFoundError) as e:
        if fresh and run_dir is not None and not (run_dir / "checkpoints").exists():
            logging.shutdown()
            shutil.rmtree(run_dir, ignore_errors=True)
        print(f"{program}: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in str(record.msg)


def tidy_lightning_logging() -> None:
    """Lightning adds its own stderr handler at import although Hydra configured the root logger: one copy is enough."""
    import lightning  # noqa: F401  (the handler is added on import)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    for handler in logging.getLogger().handlers:
        handler.addFilter(_DropAdverts())
    # expected on resume / harmless upstream deprecations: keep the console for what matters
    warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
    warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")
    # val metrics are torchmetrics objects, already reduced over ranks before they are logged
    warnings.filterwarnings("ignore", message=".*It is recommended to use `self.log\\('val/.*sync_dist=True.*")


def add_file_log(run_dir: Path, name: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / name)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] %(message)s"))
    handler.addFilter(_DropAdverts())
    logging.getLogger().addHandler(handler)


def parse_key_values(argv: list[str], schema: type, verbatim: tuple[str, ...] = ()):
    """key=value arguments checked against a dataclass (unknown keys, bad types and missing values fail with a
    ConfigError). Values are taken as written; `null`/`none` mean None except for the `verbatim` keys; a list field
    takes `[a, b]` (YAML flow) or one item."""
    from dataclasses import fields

    import yaml
    from omegaconf import OmegaConf

    from gptframe.errors import ConfigError

    cfg = OmegaConf.structured(schema)
    known = sorted(f.name for f in fields(schema))
    lists = {f.name for f in fields(schema) if "list[" in str(f.type)}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise ConfigError(f"expected key=value, got {arg!r} (keys: {', '.join(known)})")
        if key not in known:
            raise ConfigError(f"unknown argument {key!r} (keys: {', '.join(known)})")
        try:
            if value.lower() in ("null", "none") and key not in verbatim:
                cfg[key] = None
            elif key in lists:  # [a, b] as YAML's flow list (as Hydra reads it), anything else one item
                cfg[key] = yaml.safe_load(value) if value.startswith("[") else [value]
            else:
                cfg[key] = value
        except Exception as e:
            raise ConfigError(f"{key}={value!r}: {str(e).splitlines()[0]}") from None
    try:
        return OmegaConf.to_object(cfg)
    except Exception as e:
        raise ConfigError(str(e).splitlines()[0]) from None


# --- trust (issue 11): Hydra's own errors (composition, override syntax) as one line and exit code 2 ---------------
def one_line_error(e: BaseException) -> str:
    """A multi-line Hydra/OmegaConf error (and its cause) as one line: 'Available options' lists become comma lists,
    `full_key:` becomes '(key: ...)', Hydra's advice on HYDRA_FULL_ERROR and '+key' appends is dropped."""
    texts = [str(e)] + ([str(e.__cause__)] if e.__cause__ is not None and str(e.__cause__) not in str(e) else [])
    parts: list[str] = []
    listing = False
    for line in (raw.strip() for text in texts for raw in text.splitlines()):
        if line.startswith("Config search path"):
            break
        if not line or line.startswith(("object_type=", "reference_type=", "To append to your config", "Set the environment variable")):
            continue
        if listing and line.endswith("_schema"):  # the schemas behind the options, not options themselves
            continue
        if line.startswith("full_key:"):
            parts.append(f"(key: {line.split(':', 1)[1].strip()})")
        elif listing:
            parts[-1] += (" " if parts[-1].endswith(":") else ", ") + line
        else:
            parts.append(line)
        listing = listing or line.endswith(":")
    return " ".join(parts) or type(e).__name__


def run_hydra_cli(program: str, hydra_main) -> None:
    """Call a @hydra.main function so that a config Hydra cannot compose (unknown key or option, wrong type, bad
    override syntax) exits like every other bad input: one line on stderr, exit code 2, no run dir. Hydra would print
    several lines and exit 1; HYDRA_FULL_ERROR makes it raise instead (and an unexpected error then shows its whole
    traceback)."""
    import os

    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    previous = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        hydra_main()
    except (HydraException, OmegaConfBaseException) as e:
        print(f"{program}: error: {one_line_error(e)}", file=sys.stderr, flush=True)
        sys.exit(2)
    finally:
        if previous is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = previous
