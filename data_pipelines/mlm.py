"""Masked-LM (+ next-sentence) examples from the prepared token stream, as BERT's pretraining data.

The stream holds documents separated by the tokenizer's [SEP] (its end-of-document id). An example starts at a
sampled offset: segment A runs from there inside its document, segment B either continues the same document
("is next") or is a span of another document ("random next"; a corpus of one document takes a distant span). Without
NSP (RoBERTa's FULL-SENTENCES) an example is one contiguous span that may cross documents, [SEP] between them.

Sequence-length warmup (optional): training examples start short and grow linearly to max_seq_len over the first
optimizer steps, as BERT's 128-then-512 schedule and DeepSpeed's sequence-length curriculum. A masked token only becomes
predictable once attention has learned to look at its neighbours, and at initialisation each neighbour gets 1/T of
the attention: with T = 64 a small BERT sits on the "unigram plateau" (predicting frequent tokens everywhere) for
thousands of steps, with T = 16 it leaves it in a few hundred. The length is a function of the step, which follows
from an example's key, so resumed runs and any world size still build the same examples.

Masking is dynamic: every example draws its own mask from a generator seeded by (seed, example key, offset), so resumed
runs and DDP ranks see the same masks as one uninterrupted process, and no two epochs share them. Of the chosen 15% of non-special tokens, 80% become [MASK],
10% a random token, 10% stay; whole-word masking chooses words (a WordPiece token and its "##" continuations).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from data_pipelines.datasets import IGNORE_INDEX  # noqa: F401  (re-exported: the label masked-LM leaves unpredicted)
from data_pipelines.errors import TokenizerError
from data_pipelines.tokenizers import Tokenizer, WordPieceTokenizer

SCAN_CHUNK = 1 << 24  # tokens per chunk when scanning for document boundaries


@dataclass(frozen=True)
class MaskingConfig:
    mask_prob: float = 0.15
    mask_token_prob: float = 0.8
    random_token_prob: float = 0.1
    whole_word_masking: bool = False


@dataclass(frozen=True)
class SeqLenWarmup:
    """Example length by optimizer step: `start` at step 0, growing linearly to `end` at step `steps` (multiples of 8)."""

    start: int
    end: int
    steps: int

    def length(self, step: int) -> int:
        if step >= self.steps:
            return self.end
        grown = self.start + (self.end - self.start) * step // self.steps
        return min(self.end, max(self.start, grown // 8 * 8))


@dataclass(frozen=True)
class SpecialIds:
    cls: int
    sep: int
    mask: int
    pad: int
    vocab_size: int

    @classmethod
    def of(cls, tokenizer: Tokenizer) -> SpecialIds:
        ids = {"cls": tokenizer.cls_id, "sep": tokenizer.sep_id, "mask": tokenizer.mask_id, "pad": tokenizer.pad_id}
        missing = [name for name, i in ids.items() if i is None]
        if missing:
            raise TokenizerError(
                f"masked-LM training needs [CLS], [SEP], [MASK] and [PAD] tokens; the {tokenizer.kind} tokenizer has no "
                f"{', '.join(missing)} (use tokenizer=wordpiece)"
            )
        return cls(vocab_size=tokenizer.vocab_size, **ids)


def word_continuation_table(tokenizer: Tokenizer) -> np.ndarray:
    """is_continuation[id]: the token continues the previous word (WordPiece "##x"), for whole-word masking."""
    if not isinstance(tokenizer, WordPieceTokenizer):
        raise TokenizerError(
            f"whole-word masking needs a WordPiece tokenizer (its ## continuations), not {tokenizer.kind}"
        )
    return np.array([t.startswith("##") for t in tokenizer.vocab_lines()], dtype=bool)


def document_bounds(tokens: np.ndarray, end_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the documents in a stream where `end_id` closes each one; ends exclude the end token."""
    ends = []
    for lo in range(
        0, len(tokens), SCAN_CHUNK
    ):  # chunked: a bool mask of the whole stream would not fit for big corpora
        ends.append(np.flatnonzero(np.asarray(tokens[lo : lo + SCAN_CHUNK]) == end_id) + lo)
    end = np.concatenate(ends) if ends else np.zeros(0, dtype=np.int64)
    if end.size == 0 or end[-1] != len(tokens) - 1:
        end = np.append(end, len(tokens))  # the last document need not be closed
    starts = np.concatenate([[0], end[:-1] + 1])
    keep = end > starts  # drop empty documents (two end tokens in a row)
    return starts[keep].astype(np.int64), end[keep].astype(np.int64)


class MaskedLMExamples:
    """Builds batches of masked-LM examples: dict of input_ids, token_type_ids, attention_mask, labels, nsp_labels."""

    def __init__(
        self,
        tokens: np.ndarray,
        special: SpecialIds,
        max_seq_len: int,
        masking: MaskingConfig,
        nsp: bool,
        short_seq_prob: float,
        seed: int,
        continuation: np.ndarray | None = None,
        seq_len_warmup: SeqLenWarmup | None = None,
    ):
        self.tokens = tokens
        self.special = special
        self.max_seq_len = max_seq_len
        self.masking = masking
        self.nsp = nsp
        self.short_seq_prob = short_seq_prob
        self.seed = seed
        self.continuation = continuation
        self.seq_len_warmup = seq_len_warmup
        # examples per optimizer step (global batch x accumulation): the datamodule sets it once the world is known;
        # with it, an example's key gives its step, and so its length under the warmup
        self.examples_per_step = 1
        self.doc_starts, self.doc_ends = document_bounds(tokens, special.sep)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, batch: tuple[list[int], list[int]]) -> dict[str, torch.Tensor]:
        """batch = (each example's key in the global stream, example start offsets); deterministic in both."""
        keys, offsets = batch
        length = self.seq_len(max(keys[0], 0) // self.examples_per_step) if keys else self.max_seq_len
        examples = []
        for key, offset in zip(keys, offsets, strict=True):
            rng = np.random.default_rng([self.seed, max(key, 0), offset])
            ids, types, is_random_next = self._pair(rng, offset, length) if self.nsp else self._full_span(offset, length)
            masked, labels = self._mask(rng, ids)
            if key < 0:  # evaluation padding (sampling.PAD_KEY): an example no metric counts
                labels, is_random_next = np.full_like(labels, IGNORE_INDEX), IGNORE_INDEX
            examples.append((masked, types, is_random_next, labels))
        return self._collate(examples)

    def seq_len(self, step: int) -> int:
        """The length of the examples of optimizer step `step`."""
        return self.max_seq_len if self.seq_len_warmup is None else self.seq_len_warmup.length(step)

    # -- segments ------------------------------------------------------------------------------------------------
    def _document_of(self, offset: int) -> int:
        return max(0, int(np.searchsorted(self.doc_starts, offset, side="right")) - 1)

    def _span(self, start: int, length: int, doc: int) -> np.ndarray:
        start = min(max(start, self.doc_starts[doc]), self.doc_ends[doc])
        return np.asarray(self.tokens[start : min(start + length, self.doc_ends[doc])], dtype=np.int64)

    def _pair(self, rng: np.random.Generator, offset: int, length: int) -> tuple[np.ndarray, np.ndarray, int]:
        target = length - 3  # [CLS] A [SEP] B [SEP]
        if rng.random() < self.short_seq_prob:
            target = int(rng.integers(2, target + 1))
        doc = self._document_of(offset)
        a_len = int(rng.integers(1, target))
        a = self._span(offset, a_len, doc)
        if a.size == 0:  # the offset sat on a document's end token: start at the document instead
            a = self._span(self.doc_starts[doc], a_len, doc)
        b_len = target - a.size
        a_end = int(min(max(offset, self.doc_starts[doc]), self.doc_ends[doc])) + a.size
        is_random_next = int(rng.random() < 0.5 or a_end >= self.doc_ends[doc])  # no continuation left: random
        if is_random_next:
            b = self._random_span(rng, b_len, doc, a_end - a.size, a_end)
        else:
            b = self._span(a_end, b_len, doc)
        ids = np.concatenate([[self.special.cls], a, [self.special.sep], b, [self.special.sep]])
        types = np.concatenate([np.zeros(a.size + 2, dtype=np.int64), np.ones(b.size + 1, dtype=np.int64)])
        return ids, types, is_random_next

    def _random_span(self, rng: np.random.Generator, length: int, doc: int, a_start: int, a_end: int) -> np.ndarray:
        """A span from another document; with one document, one that neither overlaps nor follows A."""
        n_docs = len(self.doc_starts)
        for _ in range(10):
            other = int(rng.integers(0, n_docs))
            start = int(rng.integers(self.doc_starts[other], max(self.doc_starts[other] + 1, self.doc_ends[other])))
            if n_docs > 1 and other == doc:
                continue
            if n_docs == 1 and a_start - length - self.max_seq_len <= start <= a_end + self.max_seq_len:
                continue
            span = self._span(start, length, other)
            if span.size:
                return span
        return self._span(int(rng.integers(0, len(self.tokens))), length, 0 if n_docs == 1 else (doc + 1) % n_docs)

    def _full_span(self, offset: int, length: int) -> tuple[np.ndarray, np.ndarray, int]:
        span_len = length - 2  # [CLS] span [SEP]; documents inside keep their [SEP] separators
        start = max(0, min(offset, len(self.tokens) - span_len))
        span = np.asarray(self.tokens[start : start + span_len], dtype=np.int64)
        ids = np.concatenate([[self.special.cls], span, [self.special.sep]])
        return ids, np.zeros_like(ids), IGNORE_INDEX

    # -- masking -------------------------------------------------------------------------------------------------
    def _mask(self, rng: np.random.Generator, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(masked input ids, labels): labels hold the original token where one is to be predicted."""
        s, m = self.special, self.masking
        positions = self._positions(rng, ids)
        labels = np.full_like(ids, IGNORE_INDEX)
        labels[positions] = ids[positions]
        masked = ids.copy()
        action = rng.random(positions.size)
        masked[positions[action < m.mask_token_prob]] = s.mask
        to_random = positions[(action >= m.mask_token_prob) & (action < m.mask_token_prob + m.random_token_prob)]
        masked[to_random] = rng.integers(0, s.vocab_size, size=to_random.size)
        return masked, labels

    def _positions(self, rng: np.random.Generator, ids: np.ndarray) -> np.ndarray:
        """round(mask_prob * candidates) positions (at least one), as BERT's create_pretraining_data."""
        s = self.special
        candidates = np.flatnonzero((ids != s.cls) & (ids != s.sep) & (ids != s.pad))
        if candidates.size == 0:
            return candidates
        budget = max(1, int(round(candidates.size * self.masking.mask_prob)))
        if self.continuation is None:
            return np.sort(rng.choice(candidates, size=min(budget, candidates.size), replace=False))
        # whole words: a word is a candidate plus the "##" continuations right after it
        cont = self.continuation[ids[candidates]] & (np.diff(candidates, prepend=-2) == 1)
        words = np.split(candidates, np.flatnonzero(~cont)[1:])
        chosen: list[int] = []
        for w in rng.permutation(len(words)):
            if len(chosen) + len(words[w]) <= budget:
                chosen.extend(words[w].tolist())
            if len(chosen) >= budget:
                break
        if not chosen:  # every word is longer than the budget: take the shortest one
            chosen = min(words, key=len).tolist()
        return np.sort(np.array(chosen, dtype=np.int64))

    def _collate(self, examples: list) -> dict[str, torch.Tensor]:
        length = max(ids.size for ids, *_ in examples)
        n = len(examples)
        input_ids = np.full((n, length), self.special.pad, dtype=np.int64)
        token_type_ids = np.zeros((n, length), dtype=np.int64)
        attention_mask = np.zeros((n, length), dtype=np.int64)
        labels = np.full((n, length), IGNORE_INDEX, dtype=np.int64)
        nsp_labels = np.zeros(n, dtype=np.int64)
        for row, (ids, types, is_random_next, row_labels) in enumerate(examples):
            input_ids[row, : ids.size] = ids
            token_type_ids[row, : ids.size] = types
            attention_mask[row, : ids.size] = 1
            labels[row, : ids.size] = row_labels
            nsp_labels[row] = is_random_next
        batch = {
            "input_ids": input_ids,
            "token_type_ids": token_type_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "nsp_labels": nsp_labels,
        }
        return {k: torch.from_numpy(v) for k, v in batch.items()}
