"""SFT data: both record shapes, the bad inputs, chat-template rendering and encoding against transformers'
apply_chat_template on the exported tokenizer, the response-only loss mask, the length rule, packing, and the
rank-aware resumable batches with their step token counts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from data_pipelines.datasets import IGNORE_INDEX
from data_pipelines.errors import DataError
from data_pipelines.sft import (
    ChatTemplate,
    Conversation,
    SFTBatchSampler,
    SFTColumns,
    build_sft_data,
    document_causal_mask,
    encode_conversation,
    encode_examples,
    pack_rows,
    read_conversations,
)
from data_pipelines.tokenizers import (
    CharTokenizer,
    ChatTokenizer,
    HFTokenizer,
    SentencePieceTokenizer,
    load_tokenizer,
    tokenizer_from_files,
    with_chat_template,
)

ALPACA = [
    {"instruction": "Name a colour.", "input": "", "output": "Blue."},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "2 + 3 = 5."},
    {"instruction": "Say hello in French.", "input": "", "output": "Bonjour !"},
    {"instruction": "Give a word that rhymes with cat.", "input": "", "output": "Hat, as in: the cat wore a hat."},
]
CHATS = [
    {"messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi!"},
                  {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Your name?"},
                  {"role": "assistant", "content": "Bot."}]},
    {"messages": [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4, of course."}]},
]
# a chat template with transformers' {% generation %} marks: its assistant_masks are an independent reference
MARKED_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}<|im_start|>assistant\n{% generation %}{{ m['content'] }}<|im_end|>\n"
    "{% endgeneration %}{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _write(path, records, jsonl: bool):
    text = "\n".join(json.dumps(r) for r in records) if jsonl else json.dumps(records, indent=1)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture()
def alpaca_file(tmp_path):
    return _write(tmp_path / "alpaca.json", ALPACA, jsonl=False)


@pytest.fixture()
def chat_file(tmp_path):
    return _write(tmp_path / "chat.jsonl", CHATS, jsonl=True)


def _all_text() -> str:
    return json.dumps(ALPACA) + json.dumps(CHATS) + "systemuserassistant\n"


def _char() -> CharTokenizer:
    return CharTokenizer.train([_all_text()], with_eos=True)


def _sentencepiece() -> SentencePieceTokenizer:
    lines = (_all_text() + " the quick brown fox jumps over the lazy dog\n") * 3
    return SentencePieceTokenizer.train(lambda: lines.splitlines(), vocab_size=400)


def _hf_bpe_with_template(tmp_path) -> HFTokenizer:
    """A byte-level BPE built with `tokenizers`, carrying its own chat template, saved as transformers saves it."""
    import transformers
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([_all_text()] * 4, vocab_size=300, min_frequency=1,
                            special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], show_progress=False)
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>",
                                              eos_token="<|endoftext|>", chat_template=MARKED_TEMPLATE)
    hf.save_pretrained(tmp_path / "bpe")
    return load_tokenizer(tmp_path / "bpe")


def _exported(tokenizer, directory):
    """transformers' AutoTokenizer on the tokenizer's Hugging Face export."""
    import transformers

    directory.mkdir()
    for name, data in tokenizer.to_hf_files().items():
        (directory / name).write_bytes(data)
    return transformers.AutoTokenizer.from_pretrained(directory)


def _hf_ids(out) -> list[int]:
    return list(out["input_ids"] if not isinstance(out, list) else out)


# --- reading -----------------------------------------------------------------------------------------------------


def test_both_shapes_read_as_conversations(alpaca_file, chat_file):
    alpaca = read_conversations(alpaca_file)
    assert [c.messages[-1]["content"] for c in alpaca] == [r["output"] for r in ALPACA]
    assert alpaca[1].messages[0] == {"role": "user", "content": "Add the numbers.\n\n2 and 3"}
    assert alpaca[0].messages[0] == {"role": "user", "content": "Name a colour."}
    assert [c.messages for c in read_conversations(chat_file)] == [r["messages"] for r in CHATS]


def test_instruction_column_names_are_configurable(tmp_path):
    records = [{"prompt": "Q?", "context": "ctx", "response": "A.", "sys": "Be kind."}]
    path = _write(tmp_path / "renamed.jsonl", records, jsonl=True)
    columns = SFTColumns(instruction="prompt", input="context", output="response", system="sys")
    (conversation,) = read_conversations(path, columns)
    assert conversation.messages == [{"role": "system", "content": "Be kind."},
                                     {"role": "user", "content": "Q?\n\nctx"}, {"role": "assistant", "content": "A."}]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"text": "no shape"}, "has neither 'messages' .* nor 'instruction' \\+ 'output'"),
        ({"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}, "unknown role 'robot'"),
        ({"messages": [{"role": "user", "content": "x"}]}, "ends with a 'user' turn"),
        ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": " "}]}, "empty assistant"),
        ({"instruction": "x", "input": "", "output": ""}, "empty response"),
        ({"instruction": "x", "output": None}, "empty response"),
        ({"instruction": "x", "output": ["a"]}, "'output' must be a string"),
    ],
)
@pytest.mark.parametrize("jsonl", [True, False])
def test_a_bad_record_is_one_error_naming_file_and_row(tmp_path, bad, message, jsonl):
    path = _write(tmp_path / ("bad.jsonl" if jsonl else "bad.json"), [ALPACA[0], CHATS[1], bad], jsonl)
    row = "line 3" if jsonl else "record 3"
    with pytest.raises(DataError, match=f"{path.name}, {row}: .*{message}"):
        read_conversations(path)


def test_a_template_that_fails_to_render_names_file_and_row(chat_file):
    failing = "{% if messages[0]['role'] != 'system' %}{{ raise_exception('a system turn must come first') }}{% endif %}"
    tokenizer = ChatTokenizer(_char(), failing, ["<|x|>"], None)
    examples = read_conversations(chat_file)
    with pytest.raises(DataError, match=f"{chat_file.name}, line 2: the chat template fails to render: a system turn"):
        encode_examples(examples, ChatTemplate(tokenizer), 1000)


# --- rendering and encoding against transformers ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["char", "sentencepiece", "hf_bpe_own_template"])
def test_rendering_and_ids_equal_apply_chat_template_on_the_export(tmp_path, kind):
    base = {"char": _char, "sentencepiece": _sentencepiece}.get(kind, lambda: _hf_bpe_with_template(tmp_path))()
    tokenizer = with_chat_template(base)
    assert (tokenizer is base) == (kind == "hf_bpe_own_template")  # an own template is kept
    hf = _exported(tokenizer, tmp_path / "export")
    assert len(hf) == tokenizer.vocab_size
    template = ChatTemplate(tokenizer)
    for record in [*CHATS, *[{"messages": c.messages} for c in read_conversations(_write(
            tmp_path / "a.json", ALPACA, jsonl=False))]]:
        messages = record["messages"]
        assert template.render(messages) == hf.apply_chat_template(messages, tokenize=False)
        prompt = messages[:-1]
        assert template.render(prompt, add_generation_prompt=True) == hf.apply_chat_template(
            prompt, tokenize=False, add_generation_prompt=True)
        ids, response = encode_conversation(template, Conversation(messages, "test"))
        assert ids == _hf_ids(hf.apply_chat_template(messages, tokenize=True))
        assert template.prompt_ids(prompt) == _hf_ids(hf.apply_chat_template(prompt, add_generation_prompt=True))
        # the response tokens are the assistant turns and their end of turn, nothing else
        answers = [m["content"] for m in messages if m["role"] == "assistant"]
        assert tokenizer.decode([i for i, r in zip(ids, response, strict=True) if r]) == "".join(
            f"{a}<|im_end|>\n" for a in answers)
        if kind == "hf_bpe_own_template":  # transformers' own assistant mask, from the {% generation %} marks
            marked = hf.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
            assert [bool(m) for m in marked["assistant_masks"]] == response


def _hf_bpe_without_template() -> HFTokenizer:
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([_all_text()] * 4, vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False)
    return HFTokenizer(bpe._tokenizer, {"eos": "<|endoftext|>", "bos": "<|endoftext|>"})


@pytest.mark.parametrize("kind", ["sentencepiece", "huggingface"])
def test_chat_tokenizer_round_trips_through_its_files_and_the_export_dir(tmp_path, kind):
    from gptframe.interop.hf import _tokenizer_files

    base = _sentencepiece() if kind == "sentencepiece" else _hf_bpe_without_template()
    tokenizer = with_chat_template(base)
    assert isinstance(tokenizer, ChatTokenizer) and tokenizer.vocab_size == base.vocab_size + 2
    again = tokenizer_from_files(tokenizer.to_files())
    text = "<|im_start|>user\nthe fox<|im_end|>\n"
    assert again.encode(text) == tokenizer.encode(text) and again.decode(tokenizer.encode(text)) == text
    assert again.end_of_turn_id == tokenizer.vocab_size - 1 and again.chat_template == tokenizer.chat_template
    directory = tmp_path / "both"  # gptframe's files and the Hugging Face ones side by side, as an export writes them
    directory.mkdir()
    for name, data in _tokenizer_files(tokenizer, model_max_length=64).items():
        (directory / name).write_bytes(data)
    assert load_tokenizer(directory).encode(text) == tokenizer.encode(text)
    import transformers

    hf = transformers.AutoTokenizer.from_pretrained(directory)
    assert hf.encode(text, add_special_tokens=False) == tokenizer.encode(text)


# --- the loss mask, the length rule, packing ----------------------------------------------------------------------


def test_labels_are_the_shifted_response_tokens_only(chat_file):
    tokenizer = with_chat_template(_char())
    examples, stats = encode_examples(read_conversations(chat_file), ChatTemplate(tokenizer), 1000)
    ids, response = encode_conversation(ChatTemplate(tokenizer), read_conversations(chat_file)[0])
    first = examples[0]
    assert first.input_ids == ids[:-1] and len(first.labels) == len(ids) - 1
    assert [label != IGNORE_INDEX for label in first.labels] == response[1:]
    assert all(label in (IGNORE_INDEX, token) for label, token in zip(first.labels, ids[1:], strict=True))
    assert stats.kept == 2 and stats.truncated == stats.dropped_too_long == 0
    assert stats.loss_tokens == sum(e.num_loss_tokens for e in examples)


def test_overlong_examples_are_truncated_or_dropped_and_counted(alpaca_file):
    tokenizer = with_chat_template(_char())
    template = ChatTemplate(tokenizer)
    conversations = read_conversations(alpaca_file)
    lengths = [len(encode_conversation(template, c)[0]) for c in conversations]
    prompts = [len(template.prompt_ids(c.messages[:-1])) for c in conversations]
    max_len = sorted(lengths)[1]  # the shortest two fit
    kept, stats = encode_examples(conversations, template, max_len, overflow="truncate")
    overlong = [n > max_len for n in lengths]
    no_response_left = [n > max_len and p >= max_len for n, p in zip(lengths, prompts, strict=True)]
    assert stats.truncated == sum(overlong) - sum(no_response_left)
    assert stats.dropped_too_long == sum(no_response_left) and stats.kept == len(kept) == 4 - sum(no_response_left)
    assert all(len(e.input_ids) <= max_len - 1 for e in kept)
    dropped, stats = encode_examples(conversations, template, max_len, overflow="drop")
    assert stats.kept == len(dropped) == 2 and stats.dropped_too_long == 2 and stats.truncated == 0
    with pytest.raises(DataError, match="overflow"):
        encode_examples(conversations, template, max_len, overflow="wrap")


def test_packed_rows_hold_whole_examples_and_never_attend_across_them(alpaca_file, chat_file):
    from gptframe.models.gpt import GPT, GPTConfig

    tokenizer = with_chat_template(_char())
    template = ChatTemplate(tokenizer)
    examples, _ = encode_examples(read_conversations(alpaca_file) + read_conversations(chat_file), template, 1000)
    row_len = max(len(e.input_ids) for e in examples) + 20
    rows = pack_rows(examples, row_len, seed=0)
    assert len(rows) < len(examples) and all(len(r.input_ids) <= row_len for r in rows)
    unpacked = sorted((r.input_ids[p : p + n], r.labels[p : p + n]) for r in rows for p, n in _documents(r))
    assert unpacked == sorted((e.input_ids, e.labels) for e in examples)
    data = build_sft_data(alpaca_file, tokenizer, row_len, packing=True)
    batch = data.rows[[0, 1]]
    assert batch["input_ids"].shape == (2, row_len)
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=row_len, vocab_size=tokenizer.vocab_size, n_layer=2, n_head=2, n_embd=32)).eval()
    mask = document_causal_mask(batch["document_ids"])
    packed = model(batch["input_ids"], position_ids=batch["position_ids"], attn_mask=mask)
    for b in range(2):
        row = data.rows.rows[b]
        for start, n in _documents(row):
            alone = model(torch.tensor([row.input_ids[start : start + n]]))
            torch.testing.assert_close(packed[b, start : start + n], alone[0], atol=1e-5, rtol=1e-5)


def _documents(row) -> list[tuple[int, int]]:
    docs = np.asarray(row.document_ids)
    return [(int(np.argmax(docs == d)), int((docs == d).sum())) for d in np.unique(docs)]


# --- batches: ranks, resume, the step's token count -------------------------------------------------------------


def test_batches_are_world_size_invariant_resumable_and_carry_the_step_token_count():
    loss_tokens = np.arange(1, 24) * 3
    single = SFTBatchSampler(loss_tokens, batch_size=4, seed=5, accumulate=2)
    ranks = [SFTBatchSampler(loss_tokens, batch_size=2, seed=5, rank=r, world_size=2, accumulate=2) for r in (0, 1)]
    streams = [iter(s) for s in ranks]
    for b, (indices, step_tokens) in zip(range(14), single, strict=False):
        parts = [next(s) for s in streams]
        assert parts[0][0] + parts[1][0] == indices  # the ranks split the single-process batch
        step = b - b % 2
        expected = loss_tokens[single.global_batch(step)].sum() + loss_tokens[single.global_batch(step + 1)].sum()
        assert step_tokens == parts[0][1] == parts[1][1] == expected
    resumed = SFTBatchSampler(loss_tokens, batch_size=4, seed=5, accumulate=2, start_batch=9)
    assert next(iter(resumed)) == [x for _, x in zip(range(10), single, strict=False)][-1]


def test_the_documented_loss_scaling_equals_one_big_batch(alpaca_file, chat_file, tmp_path):
    """sum(token losses) / step_loss_tokens * world * accumulate per micro-batch, then DDP's mean over ranks and
    Lightning's 1/accumulate: the gradient of the per-token mean over the whole step."""
    from gptframe.models.gpt import GPT, GPTConfig

    tokenizer = with_chat_template(_char())
    path = _write(tmp_path / "all.jsonl", ALPACA + CHATS + ALPACA[:2], jsonl=True)
    data = build_sft_data(path, tokenizer, 400)
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=400, vocab_size=tokenizer.vocab_size, n_layer=1, n_head=2, n_embd=16))

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    def token_losses(batch):
        logits = model(batch["input_ids"])
        return torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch["labels"], reduction="sum")

    world, accumulate = 2, 2
    samplers = [iter(SFTBatchSampler(data.rows.loss_tokens, 2, 1, r, world, 0, accumulate)) for r in range(world)]
    micro = [[data.rows[next(s)] for _ in range(accumulate)] for s in samplers]  # [rank][micro-step]
    total = sum(token_losses(b) / b["step_loss_tokens"] * world * accumulate for rank in micro for b in rank)
    distributed = grads(total / (world * accumulate))  # DDP's mean over ranks x Lightning's 1/accumulate
    every = [b for rank in micro for b in rank]
    big = grads(sum(token_losses(b) for b in every) / sum(int(b["num_loss_tokens"]) for b in every))
    torch.testing.assert_close(distributed, big)


def test_chat_tokenizer_offsets_cover_added_tokens_and_the_base_pieces():
    from data_pipelines.tokenizers import CharTokenizer, ChatTokenizer

    tok = ChatTokenizer.chatml(CharTokenizer(list("abc\nuser")))
    text = "<|im_start|>user\nab<|im_end|>\n"
    ids, offsets = tok.encode_with_offsets(text)
    assert ids == tok.encode(text)
    assert [text[a:b] for a, b in offsets] == ["<|im_start|>", *"user\nab", "<|im_end|>", "\n"]
