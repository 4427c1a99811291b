"""Which speaker says this passage? A labeled task derived from Tiny Shakespeare, for fine-tuning after pretraining.

A passage is one speech: the lines after "NAME:" up to the next blank line. The task keeps the passages of the
`num_speakers` most frequent speakers, labels each with its speaker, and splits them by passage (seeded, stratified
by speaker). Nothing leaks into evaluation: the validation passages are removed from the pretraining corpus this
module also writes, so a pretrained model has never seen them, nor the speaker name above them.

    python -m data_pipelines.downstream.shakespeare_speakers OUT_DIR [--num-speakers 8] [--val-fraction 0.2]

writes OUT_DIR/{train.jsonl, val.jsonl, pretrain.txt, stats.json}; stats.json holds the majority-class baseline.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_pipelines import TINY_SHAKESPEARE
from data_pipelines.prepare import publish_dir

SPEAKER_LINE = re.compile(r"^([A-Z][A-Za-z' ]*[A-Za-z]):$")


@dataclass
class Passage:
    speaker: str
    text: str
    block: int  # index of the blank-line separated block in the corpus


def passages(corpus: str) -> tuple[list[str], list[Passage]]:
    """(blocks, passages): the corpus split at blank lines, and the blocks that are one speaker's speech."""
    blocks = corpus.split("\n\n")
    found = []
    for i, block in enumerate(blocks):
        lines = block.strip("\n").split("\n")
        match = SPEAKER_LINE.match(lines[0])
        if match and len(lines) > 1:
            found.append(Passage(match.group(1), "\n".join(lines[1:]), i))
    return blocks, found


def build(corpus: str, num_speakers: int = 8, val_fraction: float = 0.2, seed: int = 1337) -> dict:
    blocks, found = passages(corpus)
    counts = Counter(p.speaker for p in found)
    speakers = [name for name, _ in counts.most_common(num_speakers)]
    rng = np.random.default_rng(seed)
    train, val = [], []
    for speaker in speakers:  # stratified: every speaker has the same share in validation
        # a speech said twice ("A horse! a horse! ...") goes wholly to one split, or validation would be trained on
        by_text: dict[str, list[Passage]] = {}
        for p in found:
            if p.speaker == speaker:
                by_text.setdefault(p.text, []).append(p)
        groups = list(by_text.values())
        n_val = max(1, round(sum(map(len, groups)) * val_fraction))
        taken = 0
        for i in rng.permutation(len(groups)):
            if taken < n_val:
                val += groups[i]
                taken += len(groups[i])
            else:
                train += groups[i]
    train.sort(key=lambda p: p.block)
    val.sort(key=lambda p: p.block)
    held_out = {p.block for p in val}
    pretrain = "\n\n".join(b for i, b in enumerate(blocks) if i not in held_out)
    majority_label, majority_count = Counter(p.speaker for p in val).most_common(1)[0]
    train_majority = Counter(p.speaker for p in train).most_common(1)[0][0]
    stats = {
        "speakers": speakers,
        "num_train": len(train),
        "num_val": len(val),
        # the baseline predicts the most frequent *training* label for every validation passage
        "majority_label": train_majority,
        "majority_baseline_accuracy": sum(p.speaker == train_majority for p in val) / len(val),
        "most_frequent_val_label": majority_label,
        "most_frequent_val_share": majority_count / len(val),
        "pretrain_chars": len(pretrain),
        "held_out_passages": len(held_out),
    }
    return {"train": train, "val": val, "pretrain": pretrain, "stats": stats}


def write(out_dir: str | Path, num_speakers: int = 8, val_fraction: float = 0.2, seed: int = 1337,
          extra: Callable[[Path, dict], None] | None = None) -> dict:
    """Write the task files atomically (a temporary dir renamed into place); returns the stats. `extra(tmp, built)`
    may add files derived from the same split (e.g. shakespeare_instructions) into the same publication."""
    out_dir = Path(out_dir)
    result = build(TINY_SHAKESPEARE.read_text(encoding="utf-8"), num_speakers, val_fraction, seed)
    def fill(tmp: Path) -> None:
        for split in ("train", "val"):
            with (tmp / f"{split}.jsonl").open("w", encoding="utf-8") as f:
                for p in result[split]:
                    f.write(json.dumps({"text": p.text, "label": p.speaker}) + "\n")
        (tmp / "pretrain.txt").write_text(result["pretrain"], encoding="utf-8")
        (tmp / "stats.json").write_text(json.dumps(result["stats"], indent=2))
        if extra is not None:
            extra(tmp, result)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    publish_dir(out_dir, fill, replace=True)
    return result["stats"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--num-speakers", type=int, default=8)
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=1337)
    args = parser.parse_args(argv)
    print(json.dumps(write(args.out_dir, args.num_speakers, args.val_fraction, args.seed), indent=2))


if __name__ == "__main__":
    main()
