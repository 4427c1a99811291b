"""Supervised fine-tuning data: conversations or Alpaca-style instructions, rendered with a chat template, encoded with
a loss mask on the assistant's tokens only, optionally packed, served as resumable rank-aware batches.

Input: JSON (an array of objects) or JSONL (an object per line), each record either
- chat: `messages`, a list of {"role": "system" | "user" | "assistant", "content": str}, ending with an assistant
  turn; or
- instruction (Alpaca): `instruction`, optional `input`, `output` (column names configurable, `SFTColumns`); it becomes
  [user: instruction + "\\n\\n" + input (or the instruction alone), assistant: output], after an optional system turn.

Rendering: the tokenizer's Jinja `chat_template` (`data_pipelines.tokenizers.with_chat_template` gives any tokenizer
one: its own, or gptframe's ChatML default), rendered as transformers' `apply_chat_template` renders it (same sandboxed
Jinja environment, same variables), so the text equals transformers' on the exported tokenizer.

Loss mask: each assistant turn is the text a render of the conversation up to that turn adds after the render of the
conversation before it with `add_generation_prompt=True`; that is its content and the template's end of turn (ChatML:
"<|im_end|>\\n"), which the model must learn to produce to stop. Prompt, system and template tokens get IGNORE_INDEX.
Each span is encoded on its own, so the prompt encodes exactly as `chat_prompt_ids` encodes it at inference.

Length (`overflow`): an example longer than max_len tokens (the context + 1, inputs and shifted labels) is cut to its
first max_len tokens ("truncate", the default: prompt first, then as much of the response as fits) or left out ("drop");
a truncated example with no response token left is dropped. `EncodeStats` counts both for logging.

Packing: short examples share a row of exactly `max_len - 1` inputs; `document_ids` and `position_ids` (restarting at 0
per example) let the model build a block-diagonal causal mask (`document_causal_mask`), so no example attends to another.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from data_pipelines.classification import EpochBatchSampler
from data_pipelines.datamodule import StreamDataModule
from data_pipelines.datasets import IGNORE_INDEX
from data_pipelines.errors import DataError
from data_pipelines.sampling import PAD_KEY, rank_share
from data_pipelines.tokenizers import Tokenizer

ROLES = ("system", "user", "assistant")
OVERFLOW_RULES = ("truncate", "drop")
PAD_DOCUMENT = -1  # the document id of the padding at the end of a row


@dataclass
class SFTColumns:
    """Where the records keep their fields (data.* settings)."""

    messages: str = "messages"
    instruction: str = "instruction"
    input: str = "input"
    output: str = "output"
    system: str | None = None  # an optional column with a system prompt for instruction records


@dataclass
class Conversation:
    messages: list[dict[str, str]]
    where: str  # "file, row N": every error about this record names it


# ---------------------------------------------------------------------------------------------------------------------
# reading and validating


def read_conversations(path: str | Path, columns: SFTColumns | None = None) -> list[Conversation]:
    """Every record of a .json / .jsonl file as a validated conversation; bad records fail naming file and row."""
    columns = columns or SFTColumns()
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"SFT data file not found: {path} (expected a .json or .jsonl file)")
    records = list(_records(path))
    if not records:
        raise DataError(f"{path} holds no records")
    return [Conversation(_messages(record, columns, where), where) for where, record in records]


def _records(path: Path) -> Iterator[tuple[str, object]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte {e.start})") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); expected an array of records") from None
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON array of records, got a {type(data).__name__}")
        for row, record in enumerate(data, start=1):
            yield f"{path}, record {row}", record
    elif path.suffix.lower() == ".jsonl":
        for line, raw in enumerate(text.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                yield f"{path}, line {line}", json.loads(raw)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}, line {line}: not a JSON object ({e.msg})") from None
    else:
        raise DataError(f"{path}: unknown SFT data format {path.suffix!r}; expected .json or .jsonl")


def _messages(record: object, columns: SFTColumns, where: str) -> list[dict[str, str]]:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if columns.messages in record:
        return _chat_messages(record[columns.messages], columns.messages, where)
    if columns.instruction in record and columns.output in record:
        return _instruction_messages(record, columns, where)
    raise DataError(
        f"{where}: has neither {columns.messages!r} (chat) nor {columns.instruction!r} + {columns.output!r} "
        f"(instruction) fields; its fields are {sorted(record)}"
    )


def _chat_messages(messages: object, column: str, where: str) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: {column!r} must be a non-empty list of {{role, content}} objects")
    out = []
    for turn, message in enumerate(messages, start=1):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise DataError(f"{where}: message {turn} must be an object with a string 'content', got {message!r}")
        role = message.get("role")
        if role not in ROLES:
            raise DataError(f"{where}: message {turn} has unknown role {role!r}; expected one of {list(ROLES)}")
        if role == "assistant" and not message["content"].strip():
            raise DataError(f"{where}: message {turn} is an empty assistant response")
        out.append({"role": role, "content": message["content"]})
    if out[-1]["role"] != "assistant":
        raise DataError(f"{where}: the conversation ends with a {out[-1]['role']!r} turn; it must end with an "
                        "assistant turn (the response to learn)")
    return out


def _instruction_messages(record: dict, columns: SFTColumns, where: str) -> list[dict[str, str]]:
    instruction, output = record[columns.instruction], record[columns.output]
    instruction, output = ("" if v is None else v for v in (instruction, output))  # null: empty, refused below
    extra = record.get(columns.input)
    system = record.get(columns.system) if columns.system else None
    for name, value in ((columns.instruction, instruction), (columns.output, output), (columns.input, extra),
                        (columns.system, system)):
        if value is not None and not isinstance(value, str):
            raise DataError(f"{where}: {name!r} must be a string, got {type(value).__name__}")
    if not instruction.strip():
        raise DataError(f"{where}: empty instruction in {columns.instruction!r}")
    if not output.strip():
        raise DataError(f"{where}: empty response in {columns.output!r}")
    prompt = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
    messages = [{"role": "system", "content": system}] if system and system.strip() else []
    return [*messages, {"role": "user", "content": prompt}, {"role": "assistant", "content": output}]


# ---------------------------------------------------------------------------------------------------------------------
# the chat template


class ChatTemplate:
    """A tokenizer's Jinja chat template, rendered as transformers' apply_chat_template renders it.

    transformers' renderer is internal (`transformers.utils.chat_template_utils._compile_jinja_template`, which changes
    between versions) and importing it pulls in all of transformers, so this builds the same environment with jinja2
    itself: an ImmutableSandboxedEnvironment (templates come from the Hub: untrusted code), trim_blocks and
    lstrip_blocks, loop controls, a tojson that keeps non-ASCII and does not escape HTML, raise_exception,
    strftime_now, the `{% generation %}` tag (rendering its body), and the special tokens (bos_token, eos_token, ...)
    as variables. tests/unit/test_sft_data.py checks the text and the ids against apply_chat_template.
    """

    def __init__(self, tokenizer: Tokenizer):
        if tokenizer.chat_template is None:
            raise DataError(f"the {tokenizer.kind} tokenizer has no chat template; use with_chat_template(tokenizer)")
        self.tokenizer = tokenizer
        self.source = tokenizer.chat_template
        self.variables = {f"{kind}_token": text for kind, text in tokenizer.special_tokens_text().items()}
        try:
            self.template = _jinja_environment().from_string(self.source)
        except Exception as e:  # jinja2.TemplateSyntaxError
            raise DataError(f"the chat template does not compile: {e}") from None

    def render(self, messages: Sequence[dict], add_generation_prompt: bool = False, where: str = "") -> str:
        try:
            return self.template.render(
                messages=list(messages), tools=None, documents=None, add_generation_prompt=add_generation_prompt,
                **self.variables,
            )
        except Exception as e:  # TemplateError, raise_exception(), or anything the template's code raises
            raise DataError(f"{where + ': ' if where else ''}the chat template fails to render: {e}") from None

    def spans(self, messages: Sequence[dict], where: str = "") -> list[tuple[str, bool]]:
        """The rendered conversation as consecutive (text, is_response) spans (see the module docstring)."""
        spans, done = [], ""
        for turn, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = self.render(messages[:turn], add_generation_prompt=True, where=where)
            full = self.render(messages[: turn + 1], where=where)
            if not prompt.startswith(done) or not full.startswith(prompt):
                raise DataError(
                    f"{where}: the chat template does not render a conversation as a prefix of its continuation "
                    "(it rewrites earlier turns), so the response tokens cannot be told apart"
                )
            spans += [(prompt[len(done) :], False), (full[len(prompt) :], True)]
            done = full
        rest = self.render(messages, where=where)[len(done) :]
        return [(text, is_response) for text, is_response in [*spans, (rest, False)] if text]

    def prompt_ids(self, messages: Sequence[dict]) -> list[int]:
        """Inference: the conversation so far plus the template's assistant header, encoded (chat generation)."""
        return self.tokenizer.encode(self.render(messages, add_generation_prompt=True))


def _jinja_environment():
    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(Extension):
        """`{% generation %}...{% endgeneration %}` (transformers' assistant-mask marker): renders its body."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


# ---------------------------------------------------------------------------------------------------------------------
# encoding


@dataclass
class EncodedExample:
    input_ids: list[int]  # ids[:-1]
    labels: list[int]  # ids[1:], IGNORE_INDEX where the next token is not a response token

    @property
    def num_loss_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


@dataclass
class EncodeStats:
    examples: int = 0  # records read
    kept: int = 0
    truncated: int = 0  # kept, cut to max_len tokens
    dropped_too_long: int = 0  # overflow="drop", or truncation left no response token
    loss_tokens: int = 0  # response tokens kept (the loss is averaged over these)
    tokens: int = 0  # tokens kept, prompts included

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


def encode_conversation(template: ChatTemplate, conversation: Conversation) -> tuple[list[int], list[bool]]:
    """Token ids of the rendered conversation, and which of them are response tokens."""
    ids, response = [], []
    for text, is_response in template.spans(conversation.messages, conversation.where):
        piece = template.tokenizer.encode(text)
        ids += piece
        response += [is_response] * len(piece)
    return ids, response


def encode_examples(
    conversations: Sequence[Conversation], template: ChatTemplate, max_len: int, overflow: str = "truncate"
) -> tuple[list[EncodedExample], EncodeStats]:
    """Shifted (input, label) pairs of at most max_len - 1 tokens each, and what the length rule did."""
    if overflow not in OVERFLOW_RULES:
        raise DataError(f"data.overflow must be one of {list(OVERFLOW_RULES)}, got {overflow!r}")
    if max_len < 2:
        raise DataError(f"max_len must be >= 2 (an input and its label), got {max_len}")
    stats, out = EncodeStats(examples=len(conversations)), []
    for conversation in conversations:
        ids, response = encode_conversation(template, conversation)
        cut = len(ids) > max_len
        if cut and overflow == "drop":
            stats.dropped_too_long += 1
            continue
        ids, response = ids[:max_len], response[:max_len]
        labels = [t if r else IGNORE_INDEX for t, r in zip(ids[1:], response[1:], strict=True)]
        example = EncodedExample(ids[:-1], labels)
        if example.num_loss_tokens == 0:  # the response starts beyond max_len
            stats.dropped_too_long += 1
            continue
        out.append(example)
        stats.kept += 1
        stats.truncated += cut
        stats.loss_tokens += example.num_loss_tokens
        stats.tokens += len(ids)
    return out, stats


# ---------------------------------------------------------------------------------------------------------------------
# rows: one example each, or packed


@dataclass
class Row:
    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]
    document_ids: list[int]

    @property
    def num_loss_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def single_rows(examples: Sequence[EncodedExample]) -> list[Row]:
    return [Row(e.input_ids, e.labels, list(range(len(e.input_ids))), [0] * len(e.input_ids)) for e in examples]


def pack_rows(examples: Sequence[EncodedExample], row_len: int, seed: int) -> list[Row]:
    """Examples in a seeded order, each appended to the current row while it fits (else a new row starts): rows of at
    most row_len inputs, every example whole. Positions restart at 0 and document ids count up within each row."""
    order = np.random.default_rng([seed, 0x5F7]).permutation(len(examples))
    rows, current = [], Row([], [], [], [])
    for i in order.tolist():
        e = examples[i]
        if current.input_ids and len(current.input_ids) + len(e.input_ids) > row_len:
            rows.append(current)
            current = Row([], [], [], [])
        document = current.document_ids[-1] + 1 if current.document_ids else 0
        current.input_ids += e.input_ids
        current.labels += e.labels
        current.position_ids += range(len(e.input_ids))
        current.document_ids += [document] * len(e.input_ids)
    if current.input_ids:
        rows.append(current)
    return rows


def document_causal_mask(document_ids: torch.Tensor) -> torch.Tensor:
    """[B, T] document ids -> bool [B, 1, T, T], True where a token may attend: earlier tokens of its own document.
    Block-diagonal causal, so a packed example never sees another (padding, PAD_DOCUMENT, sees only padding)."""
    T = document_ids.size(-1)
    same = document_ids[:, :, None] == document_ids[:, None, :]
    causal = torch.ones(T, T, dtype=torch.bool, device=document_ids.device).tril()
    return (same & causal)[:, None]


def pad_rows(rows: Sequence[Row], pad_id: int, length: int | None = None) -> dict[str, torch.Tensor]:
    """Right-pad rows into a batch: input_ids (pad_id), labels (IGNORE_INDEX), position_ids (counting on),
    document_ids (PAD_DOCUMENT), and num_loss_tokens, this batch's response-token count (a 0-d tensor)."""
    width = length or max(len(r.input_ids) for r in rows)
    batch = {
        "input_ids": torch.full((len(rows), width), pad_id, dtype=torch.long),
        "labels": torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long),
        "position_ids": torch.arange(width).repeat(len(rows), 1),
        "document_ids": torch.full((len(rows), width), PAD_DOCUMENT, dtype=torch.long),
    }
    for b, row in enumerate(rows):
        n = len(row.input_ids)
        for key in ("input_ids", "labels", "position_ids", "document_ids"):
            batch[key][b, :n] = torch.tensor(getattr(row, key), dtype=torch.long)
    batch["num_loss_tokens"] = (batch["labels"] != IGNORE_INDEX).sum()
    return batch


# ---------------------------------------------------------------------------------------------------------------------
# datasets and sampling


class SFTRows:
    """Indexed by a batch of row indices (or (indices, step_loss_tokens) from `SFTBatchSampler`); returns a padded
    batch dict (`pad_rows`). Negative indices (evaluation padding, sampling.PAD_KEY) give row 0 with ignored labels.

    Packed rows are padded to the full row length (a fixed shape); single examples to the longest in the batch.
    """

    def __init__(self, rows: list[Row], pad_id: int, row_len: int | None = None):
        if not rows:
            raise DataError("no SFT examples left to train on")
        self.rows = rows
        self.pad_id = pad_id
        self.row_len = row_len
        self.loss_tokens = np.array([r.num_loss_tokens for r in rows], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item) -> dict[str, torch.Tensor]:
        indices, step_loss_tokens = item if isinstance(item, tuple) else (item, None)
        batch = pad_rows([self.rows[max(i, 0)] for i in indices], self.pad_id, self.row_len)
        padding = torch.tensor([i == PAD_KEY for i in indices])
        batch["labels"][padding] = IGNORE_INDEX
        batch["num_loss_tokens"] = (batch["labels"] != IGNORE_INDEX).sum()
        if step_loss_tokens is not None:
            batch["step_loss_tokens"] = torch.tensor(step_loss_tokens)
        return batch


class SFTBatchSampler(EpochBatchSampler):
    """EpochBatchSampler's shuffled, resumable, rank-sliced batches, each with the number of response tokens in the
    whole optimizer step it belongs to: all ranks' micro-batches of its `accumulate` consecutive global batches.

    Why: the SFT loss is the mean over every response token of the optimizer step. A rank computes
    sum(token losses) / step_loss_tokens * world_size * accumulate: DDP averages gradients over world_size ranks and
    Lightning scales each micro-batch's loss by 1 / accumulate, so the step's gradient is exactly that of one big
    batch's per-token mean, whatever the world size and accumulation. The sampler knows every rank's examples (keys
    are places in the global stream), so the count needs no all-reduce and no look-ahead.
    """

    def __init__(self, loss_tokens: np.ndarray, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 start_batch: int = 0, accumulate: int = 1):
        super().__init__(len(loss_tokens), batch_size, seed, rank, world_size, start_batch)
        self.loss_tokens = loss_tokens
        self.accumulate = accumulate

    def step_loss_tokens(self, b: int) -> int:
        first = b - b % self.accumulate
        return int(sum(self.loss_tokens[self.global_batch(k)].sum() for k in range(first, first + self.accumulate)))

    def __iter__(self) -> Iterator[tuple[list[int], int]]:
        b = self.start_batch
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        while True:
            yield self.global_batch(b)[lo:hi].tolist(), self.step_loss_tokens(b)
            b += 1


@dataclass
class SFTData:
    """What `build_sft_data` hands the task: the rows of one split and what encoding did."""

    rows: SFTRows
    stats: EncodeStats
    packed: bool


def build_sft_data(
    path: str | Path,
    tokenizer: Tokenizer,
    block_size: int,
    *,
    columns: SFTColumns | None = None,
    overflow: str = "truncate",
    packing: bool = False,
    seed: int = 0,
) -> SFTData:
    """One split, end to end: read, validate, render, encode (inputs of at most block_size tokens), pack if asked.

    The tokenizer must carry the chat template (`with_chat_template`) and a pad id or eos id (padding is never
    attended to by a real token nor counted in the loss, so either does)."""
    template = ChatTemplate(tokenizer)
    examples, stats = encode_examples(read_conversations(path, columns), template, block_size + 1, overflow)
    if not examples:
        raise DataError(f"{path}: no example fits block_size={block_size} with a response token ({stats.as_dict()})")
    pad_id = next((i for i in (tokenizer.pad_id, tokenizer.eos_id) if i is not None), 0)
    if packing:
        return SFTData(SFTRows(pack_rows(examples, block_size, seed), pad_id, block_size), stats, True)
    return SFTData(SFTRows(single_rows(examples), pad_id), stats, False)


class SFTDataModule(StreamDataModule):
    """Training: shuffled epochs of rows, resumable (`SFTBatchSampler`), each batch carrying its optimizer step's
    response-token count. Validation: every val row once, ranks taking equal padded shares; sum the token losses and
    `num_loss_tokens` over the split for the per-token val loss."""

    def __init__(self, train: SFTRows, val: SFTRows, batch_size: int, seed: int, num_workers: int = 0,
                 sample_conversations: list[list[dict]] | None = None):
        super().__init__()
        self.sample_conversations = sample_conversations or []  # val prompts to answer in logs (no final answer)
        self.train = train
        self.val = val
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers

    def steps_per_epoch(self, world_size: int, accumulate: int) -> int:
        return max(1, -(-len(self.train) // (self.batch_size * world_size * accumulate)))

    def train_dataloader(self):
        rank, world = self._rank_world()
        accumulate = 1 if self.trainer is None else self.trainer.accumulate_grad_batches
        sampler = SFTBatchSampler(self.train.loss_tokens, self.batch_size, self.seed, rank, world, self._start_batch(),
                                  accumulate)
        return self._batch_loader(self.train, sampler)

    def val_dataloader(self):
        rank, world = self._rank_world()
        order = rank_share(len(self.val), rank, world)
        batches = [order[i : i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)]
        return self._batch_loader(self.val, batches)
