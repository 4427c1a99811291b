"""gptframe-export ckpt=PATH out=DIR [head=masked_lm] [overwrite=true]

Writes a Hugging Face transformers model directory (config.json, model.safetensors, tokenizer files) that
`from_pretrained` and `AutoTokenizer` load, and that gptframe imports back exactly. ckpt: a gptframe checkpoint (a
.ckpt file or a sharded checkpoint directory), or a model directory. head: which transformers class a BERT MLM model
becomes (pretraining: BertForPreTraining, the default; masked_lm: BertForMaskedLM; base: BertModel).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from gptframe.cli.common import parse_key_values, user_errors_exit

PROGRAM = "gptframe-export"


@dataclass
class ExportConfig:
    ckpt: str = "???"
    out: str = "???"
    head: str | None = None  # None: the model's usual class (see gptframe.interop.hf.EXPORTS)
    overwrite: bool = False  # replace a non-empty out dir


def main(argv: list[str] | None = None) -> None:
    with user_errors_exit(PROGRAM):
        cfg = parse_key_values(sys.argv[1:] if argv is None else argv, ExportConfig)
        from gptframe.interop.hf import check_out_dir, export_class, export_model
        from gptframe.loading import load_model

        out = Path(cfg.out).expanduser().absolute()
        check_out_dir(out, cfg.overwrite)  # before the (possibly long) load
        loaded = load_model(cfg.ckpt)
        hf_class = export_class(loaded.arch, loaded.task, cfg.head)
        export_model(loaded, out, cfg.head, cfg.overwrite)
        print(f"{out}\t{hf_class}", flush=True)


if __name__ == "__main__":
    main()
