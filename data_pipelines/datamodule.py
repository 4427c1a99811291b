"""LightningDataModules: causal-LM blocks and masked-LM examples from prepared shards, and labeled examples.

Every training loader is an endless stream of batches that resumes at `global_step * accumulate_grad_batches`
micro-batches (Lightning restores the step before it builds the dataloaders), so a resumed run sees exactly the
batches the uninterrupted run would have seen; ranks take disjoint slices of each global batch.
"""

from __future__ import annotations

import logging
import os

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from data_pipelines.classification import EncodedExamples, EpochBatchSampler
from data_pipelines.datasets import MixtureBlockDataset
from data_pipelines.errors import DataError
from data_pipelines.mixture import MixtureBlockSampler
from data_pipelines.mlm import MaskedLMExamples
from data_pipelines.prepare import PreparedData, PreparedSource
from data_pipelines.sampling import EvalBlockSampler, RandomBlockSampler, rank_share

log = logging.getLogger(__name__)


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, and no more than SLURM's cpus-per-task when set."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if os.environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
        cpus = min(cpus, int(os.environ["SLURM_CPUS_PER_TASK"]))
    return cpus


def loader_workers(requested: int) -> int:
    """DataLoader workers, capped so that they and the training process fit the CPUs this rank was given."""
    workers = min(requested, max(0, available_cpus() - 1))
    if workers < requested:
        log.info("data: %d loader workers instead of data.num_workers=%d (%d CPUs available)", workers, requested,
                 available_cpus())
    return workers


class StreamDataModule(L.LightningDataModule):
    """Shared plumbing: rank/world from the trainer, the resume point, and loaders over batch-indexed datasets."""

    seed: int
    num_workers: int

    def _rank_world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def _start_batch(self) -> int:
        return 0 if self.trainer is None else self.trainer.global_step * self.trainer.accumulate_grad_batches

    def _batch_loader(self, dataset, batch_sampler) -> DataLoader:
        workers = loader_workers(self.num_workers)
        return DataLoader(
            dataset,
            sampler=batch_sampler,
            batch_size=None,  # the sampler yields whole batches; the dataset builds them in one call
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),  # page-locked batches: asynchronous host-to-GPU copies
            persistent_workers=workers > 0,
            # its own generator: creating an iterator must not draw from the global RNG (dropout), or a resumed
            # run (which creates one more iterator) would diverge from the uninterrupted one
            generator=torch.Generator().manual_seed(self.seed),
        )


class CausalLMDataModule(StreamDataModule):
    """Training: random blocks from a resumable sampler, each source in proportion to its weight. Validation: fixed
    blocks of every source (`eval_batches` global batches of each, or all of them), batches tagged with their source.

    `prepared` is one corpus (PreparedData) or the sources of a mixture (PreparedSource list)."""

    def __init__(
        self,
        prepared: PreparedData | list[PreparedSource],
        block_size: int,
        batch_size: int,
        seed: int,
        eval_batches: int | None = None,
        num_workers: int = 0,
    ):
        super().__init__()
        if isinstance(prepared, PreparedData):
            prepared = [PreparedSource("data", 1.0, prepared, str(prepared.directory))]
        self.sources = prepared
        self.block_size = block_size
        self.batch_size = batch_size
        self.seed = seed
        self.eval_batches = eval_batches  # None: the whole val split
        self.num_workers = num_workers
        for source in self.sources:
            for split in ("train", "val"):
                n = source.data.num_tokens(split)
                if n <= block_size:
                    raise DataError(
                        f"data source {source.name!r}: the {split} split has {n} tokens, fewer than one block of "
                        f"block_size+1={block_size + 1}; use more data, a larger data.val_fraction, or a smaller "
                        "block size"
                    )

    @property
    def prepared(self) -> PreparedData:
        """The first source's data (what W&B's sample table draws its prompts from)."""
        return self.sources[0].data

    @property
    def source_names(self) -> list[str]:
        return [s.name for s in self.sources]

    @property
    def source_weights(self) -> list[float]:
        return [s.weight for s in self.sources]

    def _sampler(self, start_batch: int, rank: int = 0, world: int = 1) -> MixtureBlockSampler:
        return MixtureBlockSampler(
            [s.data.num_tokens("train") for s in self.sources], self.block_size, self.batch_size, self.seed,
            self.source_weights, rank, world, start_batch,
        )

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        dataset = MixtureBlockDataset([s.data.tokens("train") for s in self.sources], self.block_size)
        return self._batch_loader(dataset, self._sampler(self._start_batch(), rank, world))

    def val_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        # eval_batches counts global batches, so every world size evaluates the same blocks
        max_blocks = None if self.eval_batches is None else self.eval_batches * self.batch_size * world
        per_source = [
            EvalBlockSampler(
                s.data.num_tokens("val"), self.block_size, self.batch_size, max_blocks, rank, world,
                with_index=True,  # keys mark the padding that evens out the ranks' shares
            )
            for s in self.sources
        ]
        batches = [(keys, offsets, i) for i, sampler in enumerate(per_source) for keys, offsets in sampler]
        dataset = MixtureBlockDataset([s.data.tokens("val") for s in self.sources], self.block_size)
        return self._batch_loader(dataset, batches)

    def source_summary(self, global_step: int) -> dict[str, dict]:
        """Per source: its weight, the training tokens it gave the first `global_step` optimizer steps, and how many
        epochs of it that is (blocks are drawn at random offsets, so a source smaller than its share repeats)."""
        accumulate = 1 if self.trainer is None else self.trainer.accumulate_grad_batches
        world = self._rank_world()[1]
        examples = global_step * accumulate * self.batch_size * world
        counts = self._sampler(0).schedule.counts(examples)
        return {
            s.name: {
                "weight": s.weight,
                "tokens": int(n) * self.block_size,
                "epochs": int(n) * self.block_size / s.data.num_tokens("train"),
                "train_tokens": s.data.num_tokens("train"),
                "data": str(s.data.directory),
            }
            for s, n in zip(self.sources, counts, strict=True)
        }

    def teardown(self, stage: str) -> None:
        if stage == "fit" and self.trainer is not None and self.trainer.is_global_zero:
            drawn = self.source_summary(self.trainer.global_step)
            log.info("data: after %d steps, epochs of each source: %s", self.trainer.global_step,
                     ", ".join(f"{name} {d['epochs']:.3f} ({d['tokens']:,} tokens)" for name, d in drawn.items()))


class MaskedLMDataModule(StreamDataModule):
    """Masked-LM (+NSP) examples starting at random offsets (training) or fixed ones (validation, same masks each
    time, so val metrics compare across steps)."""

    def __init__(
        self,
        prepared: PreparedData,
        examples: dict[str, MaskedLMExamples],
        batch_size: int,
        seed: int,
        max_seq_len: int,
        eval_batches: int | None = None,
        num_workers: int = 0,
    ):
        super().__init__()
        self.prepared = prepared
        self.examples = examples  # split -> its example builder
        self.batch_size = batch_size
        self.seed = seed
        self.max_seq_len = max_seq_len
        self.eval_batches = eval_batches
        self.num_workers = num_workers
        for split in ("train", "val"):
            if prepared.num_tokens(split) < 2:
                raise DataError(f"the {split} split has {prepared.num_tokens(split)} tokens; masked-LM needs more data")

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        accumulate = 1 if self.trainer is None else self.trainer.accumulate_grad_batches
        self.examples["train"].examples_per_step = self.batch_size * world * accumulate  # keys -> steps
        sampler = RandomBlockSampler(
            self.prepared.num_tokens("train"),
            1,
            self.batch_size,
            self.seed,
            rank,
            world,
            self._start_batch(),
            with_index=True,
        )
        return self._batch_loader(self.examples["train"], sampler)

    def val_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        max_examples = None if self.eval_batches is None else self.eval_batches * self.batch_size * world
        stride = max(1, self.max_seq_len - 2)  # one example per max_seq_len tokens covers the split
        num_tokens = self.prepared.num_tokens("val")
        sampler = EvalBlockSampler(
            num_tokens, min(stride, num_tokens - 1), self.batch_size, max_examples, rank, world, with_index=True
        )
        return self._batch_loader(self.examples["val"], sampler)


class ClassificationDataModule(StreamDataModule):
    """Shuffled epochs of encoded labeled examples (a resumable batch stream); validation over all of them."""

    def __init__(self, train: EncodedExamples, val: EncodedExamples, batch_size: int, seed: int, num_workers: int = 0):
        super().__init__()
        self.train = train
        self.val = val
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers

    def steps_per_epoch(self, world_size: int, accumulate: int) -> int:
        return max(1, -(-len(self.train) // (self.batch_size * world_size * accumulate)))

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        sampler = EpochBatchSampler(len(self.train), self.batch_size, self.seed, rank, world, self._start_batch())
        return self._batch_loader(self.train, sampler)

    def val_dataloader(self) -> DataLoader:
        order = self._val_share(*self._rank_world())
        batches = [order[i : i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)]
        return self._batch_loader(self.val, batches)

    def _val_share(self, rank: int, world: int) -> np.ndarray:
        """This rank's val example indices, PAD_KEY-padded to an equal share (the same number of batches per rank)."""
        return rank_share(len(self.val), rank, world)
