"""LightningDataModule for causal-LM blocks from prepared shards."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader

from data_pipelines.datasets import BlockDataset
from data_pipelines.errors import DataError
from data_pipelines.prepare import PreparedData
from data_pipelines.sampling import EvalBlockSampler, RandomBlockSampler


class CausalLMDataModule(L.LightningDataModule):
    """Training: random blocks from a resumable sampler. Validation: fixed blocks (`eval_batches`, or all of them).

    The sampler resumes at `global_step * accumulate_grad_batches` micro-batches, which Lightning restores before it
    builds the dataloaders, so a resumed run sees exactly the batches the uninterrupted run would have seen.
    """

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

    def _rank_world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def _loader(self, split: str, batch_sampler) -> DataLoader:
        return DataLoader(
            BlockDataset(self.prepared.tokens(split), self.block_size),
            sampler=batch_sampler,
            batch_size=None,  # the sampler yields whole batches
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            # its own generator: creating an iterator must not draw from the global RNG (dropout), or a resumed
            # run (which creates one more iterator) would diverge from the uninterrupted one
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        start = 0
        if self.trainer is not None:
            start = self.trainer.global_step * self.trainer.accumulate_grad_batches
        sampler = RandomBlockSampler(
            self.prepared.num_tokens("train"), self.block_size, self.batch_size, self.seed, rank, world, start
        )
        return self._loader("train", sampler)

    def val_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        max_blocks = None if self.eval_batches is None else self.eval_batches * self.batch_size
        sampler = EvalBlockSampler(
            self.prepared.num_tokens("val"), self.block_size, self.batch_size, max_blocks, rank, world
        )
        return self._loader("val", sampler)
