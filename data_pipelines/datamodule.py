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
from data_pipelines.datasets import BlockDataset
from data_pipelines.errors import DataError
from data_pipelines.mlm import MaskedLMExamples
from data_pipelines.prepare import PreparedData
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
    """Training: random blocks from a resumable sampler. Validation: fixed blocks (`eval_batches`, or all of them)."""

    def __init__(
        self,
        prepared: PreparedData,
        block_size: int,
        batch_size: int,
        seed: int,
        eval_batches: int | None = None,
        num_workers: int = 0,
    ):
        super().__init__()
        self.prepared = prepared
        self.block_size = block_size
        self.batch_size = batch_size
        self.seed = seed
        self.eval_batches = eval_batches  # None: the whole val split
        self.num_workers = num_workers
        for split in ("train", "val"):
            n = prepared.num_tokens(split)
            if n <= block_size:
                raise DataError(
                    f"the {split} split has {n} tokens, fewer than one block of block_size+1={block_size + 1}; "
                    "use more data, a larger data.val_fraction, or a smaller block size"
                )

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        sampler = RandomBlockSampler(
            self.prepared.num_tokens("train"),
            self.block_size,
            self.batch_size,
            self.seed,
            rank,
            world,
            self._start_batch(),
        )
        return self._batch_loader(BlockDataset(self.prepared.tokens("train"), self.block_size), sampler)

    def val_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        # eval_batches counts global batches, so every world size evaluates the same blocks
        max_blocks = None if self.eval_batches is None else self.eval_batches * self.batch_size * world
        sampler = EvalBlockSampler(
            self.prepared.num_tokens("val"), self.block_size, self.batch_size, max_blocks, rank, world,
            with_index=True,  # keys mark the padding that evens out the ranks' shares
        )
        return self._batch_loader(BlockDataset(self.prepared.tokens("val"), self.block_size), sampler)


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
