"""Masked-LM examples: segment structure, NSP pairs, masking statistics, whole words, determinism."""

import numpy as np
import pytest

from data_pipelines.errors import TokenizerError
from data_pipelines.mlm import (
    IGNORE_INDEX,
    MaskedLMExamples,
    MaskingConfig,
    SeqLenWarmup,
    SpecialIds,
    document_bounds,
    word_continuation_table,
)
from data_pipelines.tokenizers import CharTokenizer, WordPieceTokenizer

PAD, CLS, SEP, MASK = 0, 1, 2, 3
SPECIAL = SpecialIds(cls=CLS, sep=SEP, mask=MASK, pad=PAD, vocab_size=1000)


def _stream(doc_lengths: list[int]) -> np.ndarray:
    """Documents of distinct, increasing token ids (so a span's origin is recognisable), each closed by [SEP]."""
    parts, next_id = [], 10
    for n in doc_lengths:
        parts.append(np.arange(next_id, next_id + n))
        parts.append([SEP])
        next_id += n
    return np.concatenate(parts).astype(np.uint16)


def _keyed(batch_index: int, offsets: list[int]) -> tuple[list[int], list[int]]:
    """(example keys, offsets) as the training sampler yields them for one process."""
    first = batch_index * len(offsets)
    return list(range(first, first + len(offsets))), offsets


def _examples(tokens, nsp=True, seed=0, max_seq_len=32, masking=None, **kw):
    return MaskedLMExamples(tokens, SPECIAL, max_seq_len, masking or MaskingConfig(), nsp, short_seq_prob=0.0, seed=seed, **kw)


def test_document_bounds_exclude_separators_and_empty_documents():
    tokens = np.array([5, 6, SEP, SEP, 7, SEP, 8, 9])
    starts, ends = document_bounds(tokens, SEP)
    assert starts.tolist() == [0, 4, 6] and ends.tolist() == [2, 5, 8]


def test_nsp_pairs_have_bert_layout_and_honest_labels():
    tokens = _stream([300, 250, 400, 280])
    ex = _examples(tokens, masking=MaskingConfig(mask_prob=1e-9))  # (at least one masked token; labels unchanged below)
    starts, ends = document_bounds(tokens, SEP)
    doc_of = lambda t: int(np.searchsorted(starts, np.flatnonzero(tokens == t)[0], side="right") - 1)  # noqa: E731
    labels_seen = []
    for b in range(40):
        offsets = np.random.default_rng(b).integers(0, len(tokens) - 1, size=8).tolist()
        batch = ex[_keyed(b, offsets)]
        for row in range(8):
            mask = batch["attention_mask"][row].bool()
            ids = batch["input_ids"][row][mask].numpy()
            labels = batch["labels"][row][mask].numpy()
            ids = np.where(labels != IGNORE_INDEX, labels, ids)  # undo the masking
            types = batch["token_type_ids"][row][mask].numpy()
            assert len(ids) <= 32 and ids[0] == CLS and ids[-1] == SEP
            seps = np.flatnonzero(ids == SEP)
            assert len(seps) == 2, ids
            a, b_seg = ids[1 : seps[0]], ids[seps[0] + 1 : -1]
            assert len(a) >= 1 and len(b_seg) >= 1
            assert (types[: seps[0] + 1] == 0).all() and (types[seps[0] + 1 :] == 1).all()
            assert np.all(np.diff(a) == 1) and np.all(np.diff(b_seg) == 1)  # contiguous spans inside a document
            assert len({doc_of(t) for t in a}) == 1
            is_random = int(batch["nsp_labels"][row])
            labels_seen.append(is_random)
            if is_random:
                assert doc_of(b_seg[0]) != doc_of(a[0])  # another document
            else:
                assert b_seg[0] == a[-1] + 1  # the continuation of A
    assert 0.35 < np.mean(labels_seen) < 0.65


def test_single_document_random_next_is_not_adjacent():
    tokens = _stream([5000])
    ex = _examples(tokens)
    for b in range(20):
        batch = ex[_keyed(b, np.random.default_rng(b).integers(0, 4999, size=8).tolist())]
        for row in np.flatnonzero(batch["nsp_labels"].numpy() == 1):
            labels, inputs = batch["labels"][row].numpy(), batch["input_ids"][row].numpy()
            ids = np.where(labels != IGNORE_INDEX, labels, inputs)
            seps = np.flatnonzero(ids == SEP)
            a_end, b_start = ids[seps[0] - 1], ids[seps[0] + 1]
            assert abs(int(b_start) - int(a_end)) > 32


def test_masking_rates_are_bert_s_15_80_10_10():
    tokens = _stream([20000])
    ex = _examples(tokens, nsp=False, max_seq_len=64)
    chosen = masked = randomised = kept = candidates = 0
    for b in range(60):
        batch = ex[_keyed(b, np.random.default_rng(b).integers(0, 19000, size=16).tolist())]
        ids, labels = batch["input_ids"].numpy(), batch["labels"].numpy()
        predicted = labels != IGNORE_INDEX
        assert not np.isin(labels[predicted], [CLS, SEP, PAD]).any()  # special tokens are never predicted
        assert (batch["nsp_labels"].numpy() == IGNORE_INDEX).all()  # no NSP in full-sentence mode
        assert (batch["token_type_ids"].numpy() == 0).all()
        candidates += int(((ids != CLS) & (ids != SEP) & (ids != PAD)).sum())
        chosen += int(predicted.sum())
        masked += int((ids[predicted] == MASK).sum())
        kept += int((ids[predicted] == labels[predicted]).sum())
        randomised += int(((ids[predicted] != MASK) & (ids[predicted] != labels[predicted])).sum())
    assert chosen / candidates == pytest.approx(0.15, abs=0.01)
    assert masked / chosen == pytest.approx(0.8, abs=0.03)
    assert kept / chosen == pytest.approx(0.1, abs=0.025)  # (a random token can equal the original, rarely)
    assert randomised / chosen == pytest.approx(0.1, abs=0.025)


def test_masks_are_deterministic_per_batch_index_and_differ_between_batches():
    tokens = _stream([3000, 3000])
    ex = _examples(tokens)
    offsets = [5, 900, 3100, 4000]
    first, again, other = ex[_keyed(7, offsets)], ex[_keyed(7, offsets)], ex[_keyed(8, offsets)]
    for key in first:
        assert (first[key] == again[key]).all()
    assert not (first["labels"] == other["labels"]).all()



def test_seq_len_warmup_is_linear_in_multiples_of_8_then_full_length():
    warmup = SeqLenWarmup(start=16, end=64, steps=100)
    lengths = [warmup.length(step) for step in range(0, 120, 10)]
    assert lengths == [16, 16, 24, 24, 32, 40, 40, 48, 48, 56, 64, 64]
    assert [SeqLenWarmup(start=20, end=30, steps=10).length(s) for s in (0, 9, 10)] == [20, 24, 30]  # >= start


@pytest.mark.parametrize("nsp", [True, False])
def test_seq_len_warmup_lengths_follow_the_step_of_the_keys_whatever_the_world_size(nsp):
    tokens = _stream([5000, 5000])
    warmup = SeqLenWarmup(start=16, end=64, steps=100)
    single = _examples(tokens, nsp=nsp, max_seq_len=64, seq_len_warmup=warmup)
    single.examples_per_step = 8  # batch 8, one process
    ranks = _examples(tokens, nsp=nsp, max_seq_len=64, seq_len_warmup=warmup)
    ranks.examples_per_step = 8  # batch 4 on each of 2 ranks
    offsets = [5, 900, 3100, 4000, 6000, 7000, 8000, 9000]
    for step in (0, 30, 60, 99, 100, 500):
        keys = list(range(step * 8, step * 8 + 8))
        whole = single[(keys, offsets)]
        assert whole["input_ids"].shape[1] <= warmup.length(step)
        assert whole["attention_mask"].sum(1).max().item() == warmup.length(step)  # no short_seq_prob here
        for rank in (0, 1):  # each rank's half equals the single process's rows
            part = ranks[(keys[4 * rank : 4 * rank + 4], offsets[4 * rank : 4 * rank + 4])]
            rows = slice(4 * rank, 4 * rank + 4)
            width = part["input_ids"].shape[1]
            assert (part["input_ids"] == whole["input_ids"][rows, :width]).all()
            assert (part["labels"] == whole["labels"][rows, :width]).all()
    full = _examples(tokens, nsp=nsp, max_seq_len=64)  # no warmup: validation, always full length
    assert full[([0, 1], [5, 900])]["attention_mask"].sum(1).max().item() == 64


def test_whole_word_masking_masks_every_piece_of_a_word(shakespeare_text):
    tok = WordPieceTokenizer.train(lambda: shakespeare_text[:200_000].splitlines(), vocab_size=400)
    special = SpecialIds.of(tok)
    continuation = word_continuation_table(tok)
    assert continuation.sum() > 0
    ids = np.array(tok.encode(shakespeare_text[:20_000].replace("\n", " ")) + [tok.sep_id], dtype=np.uint16)
    ex = MaskedLMExamples(ids, special, 64, MaskingConfig(whole_word_masking=True), False, 0.0, seed=0,
                          continuation=continuation)
    checked = 0
    for b in range(20):
        batch = ex[_keyed(b, np.random.default_rng(b).integers(0, len(ids) - 70, size=8).tolist())]
        for row in range(8):
            labels = batch["labels"][row].numpy()
            original = np.where(labels != IGNORE_INDEX, labels, batch["input_ids"][row].numpy())
            predicted = labels != IGNORE_INDEX
            for i in range(2, len(original) - 1):
                if continuation[original[i]] and original[i - 1] not in (special.cls, special.sep):
                    assert predicted[i] == predicted[i - 1], "a word was masked only in part"
                    checked += 1
    assert checked > 50


def test_mlm_needs_mask_tokens_and_whole_words_need_wordpiece():
    char = CharTokenizer.train(["abc"], with_eos=False)
    with pytest.raises(TokenizerError, match=r"\[MASK\].*tokenizer=wordpiece"):
        SpecialIds.of(char)
    with pytest.raises(TokenizerError, match="WordPiece"):
        word_continuation_table(char)
