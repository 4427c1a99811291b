"""The question-answering DataModule. Token classification needs no class of its own: ClassificationDataModule takes
any dataset indexed by a batch of example indices, so `ClassificationDataModule(TokenClassificationExamples(...),
TokenClassificationExamples(...), batch_size, seed)` is its DataModule (entity counts sum across ranks as they are).
"""

from __future__ import annotations

import numpy as np

from data_pipelines.datamodule import ClassificationDataModule
from data_pipelines.question_answering import QAExample, QAFeatureDataset, grouped_rank_share


class QuestionAnsweringDataModule(ClassificationDataModule):
    """Training: shuffled epochs of windows, a resumable rank-sliced stream (ClassificationDataModule's). Validation:
    every window of every question, a question's windows all on one rank (`grouped_rank_share`), so each rank
    post-processes its own questions and the exact-match / F1 sums are the only thing ranks add up. Batches carry
    `feature_index` (PAD_KEY for the padding that evens out the ranks) to find each window's offsets and question."""

    def __init__(self, train: QAFeatureDataset, val: QAFeatureDataset, val_examples: list[QAExample],
                 batch_size: int, seed: int, num_workers: int = 0):
        super().__init__(train, val, batch_size, seed, num_workers)
        self.val_examples = val_examples
        self.val_groups = val.features.features_of(len(val_examples))  # question -> its windows

    def _val_share(self, rank: int, world: int) -> np.ndarray:
        return grouped_rank_share(self.val_groups, rank, world)
