"""A tiny instruction set derived from Tiny Shakespeare, for SFT after pretraining (launch/pipeline.sh gpt_sft):
the speaker task's passages (`shakespeare_speakers`, same split, so no val passage is in the pretraining corpus) as
Alpaca-style questions

    {"instruction": "Which character speaks these lines?", "input": <the passage's first lines>, "output": "ROMEO"}

The passage is cut to its first `max_lines` lines so that prompt and answer fit a small model's context.

    python -m data_pipelines.downstream.shakespeare_instructions OUT_DIR [--max-lines 2]

writes the speaker task's files (train.jsonl, val.jsonl, pretrain.txt, stats.json) and instructions_{train,val}.jsonl.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from data_pipelines.downstream import shakespeare_speakers

INSTRUCTION = "Which character speaks these lines?"


def instruction_record(passage_text: str, speaker: str, max_lines: int) -> dict[str, str]:
    return {"instruction": INSTRUCTION, "input": "\n".join(passage_text.split("\n")[:max_lines]), "output": speaker}


def write(out_dir: str | Path, max_lines: int = 2) -> dict:
    def instructions(tmp: Path, built: dict) -> None:
        for split in ("train", "val"):
            with (tmp / f"instructions_{split}.jsonl").open("w", encoding="utf-8") as f:
                for p in built[split]:
                    f.write(json.dumps(instruction_record(p.text, p.speaker, max_lines)) + "\n")

    return shakespeare_speakers.write(out_dir, extra=instructions)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--max-lines", type=int, default=2)
    args = parser.parse_args(argv)
    print(json.dumps(write(args.out_dir, args.max_lines), indent=2))


if __name__ == "__main__":
    main()
