"""`gptframe.pipeline(task, model=PATH)`: the shapes users know from transformers.pipeline.

PATH is a gptframe checkpoint, a gptframe export or a Hugging Face model directory; a `LoadedModel` already in memory
(e.g. the model being trained, for the samples logged at validation) is used as it is, on its device. Inputs are
encoded exactly as in training (`data_pipelines.classification.encode_examples`), so a pipeline sees what the model
was tuned on.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from data_pipelines.classification import encode_examples
from data_pipelines.question_answering import QAExample, QAFeatureDataset, build_qa_features, context_windows
from data_pipelines.question_answering_eval import Window, pipeline_answers
from data_pipelines.token_classification import token_word_ids, whitespace_words
from data_pipelines.token_classification_eval import (
    aggregate_entities,
    merge_overlapping_entities,
    softmax,
    subword_flags,
)
from gptframe.errors import CheckpointError
from gptframe.inference.chat import chat_replies
from gptframe.inference.decoding import GenerationSettings, generate
from gptframe.inference.generate import encode_prompt
from gptframe.loading import LoadedModel, load_model, require_task
from gptframe.models.factory import backbone


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _load(model: str | Path | LoadedModel, device: str | None) -> tuple[LoadedModel, torch.device]:
    """The model and the device inputs go to: loaded from a path, or one in memory where its weights are."""
    if isinstance(model, LoadedModel):
        return model, next(model.model.parameters()).device
    device = resolve_device(device)
    return load_model(model, device), device


def _where(model: str | Path | LoadedModel) -> str:
    return "the given model" if isinstance(model, LoadedModel) else str(model)


class TextGenerationPipeline:
    """pipe(prompt or [prompts], max_new_tokens=..., do_sample=..., ...) -> [{"generated_text": prompt + continuation}]

    Chat, as transformers: a conversation ([{"role", "content"}, ...]) or a list of them gives, per conversation,
    [{"generated_text": the conversation + {"role": "assistant", "content": reply}}] (return_full_text=False: the
    reply alone), rendered with the tokenizer's chat template as SFT trained on it, ending at the end of the turn.
    Any decoding option of `GenerationSettings` passes through: num_beams, length_penalty, early_stopping,
    repetition_penalty, no_repeat_ngram_size, min_new_tokens, eos_token_id (an id or a list), stop_strings.
    """

    def __init__(self, model_path: str | Path | LoadedModel, device: str | None = None):
        loaded, self.device = _load(model_path, device)
        require_task(loaded, "clm", "text-generation", _where(model_path), causal=True)
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        self.where = _where(model_path)

    def __call__(
        self,
        text_inputs: str | list[str] | list[dict] | list[list[dict]],
        max_new_tokens: int = 50,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float = 1.0,
        num_return_sequences: int = 1,
        seed: int | None = None,
        return_full_text: bool = True,
        **options,
    ):
        try:
            settings = GenerationSettings(
                max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
                num_return_sequences=num_return_sequences, vocab_size=self.tokenizer.vocab_size, **options,
            )
        except TypeError as e:  # an unknown keyword
            raise ValueError(f"text-generation: {e}") from None
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(seed)
        if _is_conversation(text_inputs):
            return self._chat([text_inputs], settings, generator, return_full_text)[0]
        if isinstance(text_inputs, list) and text_inputs and all(_is_conversation(c) for c in text_inputs):
            return self._chat(text_inputs, settings, generator, return_full_text)
        prompts = [text_inputs] if isinstance(text_inputs, str) else list(text_inputs)
        if settings.eos_token_id is None and self.tokenizer.eos_id is not None:
            settings = replace(settings, eos_token_id=self.tokenizer.eos_id)
        ends = set(settings.eos_ids)
        outputs = []
        for prompt in prompts:  # one at a time: a seeded run draws the same numbers whatever the other prompts
            rows = generate(self.model, [encode_prompt(self.tokenizer, prompt)], settings, generator=generator,
                            decode=self.tokenizer.decode)[0]
            outputs.append([
                {"generated_text": (prompt if return_full_text else "")
                 + self.tokenizer.decode(seq[:-1] if seq and seq[-1] in ends else seq)}
                for seq in rows
            ])
        return outputs[0] if isinstance(text_inputs, str) else outputs

    def _chat(self, conversations, settings, generator, return_full_text: bool) -> list[list[dict]]:
        if self.tokenizer.chat_template is None:
            raise ValueError(
                f"text-generation: {self.where} has no chat template, so it cannot take messages (fine-tune it with "
                "task=sft, which adds one, or pass a plain text prompt)"
            )
        replies = chat_replies(self.model, self.tokenizer, conversations, settings, generator=generator)
        return [
            [{"generated_text": [*messages, {"role": "assistant", "content": reply}] if return_full_text else reply}
             for reply in rows]
            for messages, rows in zip(conversations, replies, strict=True)
        ]


def _is_conversation(value) -> bool:
    """A list of {role, content} messages (transformers' chat input)."""
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) and "role" in m for m in value)


class _EncoderPipeline:
    """Shared by the pipelines that read a whole text: the loaded model and the training-time encoding."""

    def __init__(self, model_path: str | Path | LoadedModel, device: str | None = None):
        self.loaded, self.device = _load(model_path, device)
        self.model, self.tokenizer = self.loaded.model, self.loaded.tokenizer
        self.max_len = self.loaded.spec.context_length(self.loaded.config)

    def _encode(self, text: str, text_pair: str | None = None) -> dict[str, torch.Tensor]:
        ids, types = encode_examples(
            self.tokenizer, [text], [text_pair] if text_pair is not None else None, self.max_len,
            cls_sep=not self.loaded.spec.causal,
        )
        return {
            "input_ids": torch.tensor(ids, device=self.device),
            "token_type_ids": torch.tensor(types, device=self.device),
        }


class FillMaskPipeline(_EncoderPipeline):
    """pipe("the [MASK] of rome", top_k=5) -> [{"score", "token", "token_str", "sequence"}, ...] best first; with
    several [MASK] tokens, one such list per mask."""

    def __init__(self, model_path: str | Path | LoadedModel, device: str | None = None):
        super().__init__(model_path, device)
        require_task(self.loaded, "mlm", "fill-mask", _where(model_path))
        if self.tokenizer.mask_id is None:
            raise CheckpointError(f"fill-mask: the tokenizer of {_where(model_path)} has no [MASK] token")

    @torch.no_grad()
    def __call__(self, inputs: str | list[str], top_k: int = 5):
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        outputs = [self._fill(text, top_k) for text in texts]
        return outputs[0] if isinstance(inputs, str) else outputs

    def _fill(self, text: str, top_k: int) -> list:
        batch = self._encode(text)
        ids = batch["input_ids"][0]
        positions = (ids == self.tokenizer.mask_id).nonzero().flatten().tolist()
        if not positions:
            raise ValueError(f"fill-mask: no [MASK] token in {text!r}")
        logits, _ = self.model(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"])
        probs = logits[0, :, : self.tokenizer.vocab_size].float().softmax(-1)
        results = []
        for pos in positions:
            scores, tokens = probs[pos].topk(min(top_k, self.tokenizer.vocab_size))
            candidates = []
            for score, token in zip(scores.tolist(), tokens.tolist(), strict=True):
                filled = ids.clone()
                filled[pos] = token
                # the sequence without [CLS]/[SEP] (and other masks left as they are), as transformers shows it
                body = filled.tolist()[1:-1]
                candidates.append({
                    "score": score,
                    "token": token,
                    "token_str": self.tokenizer.decode([token]).strip(),
                    "sequence": self.tokenizer.decode(body),
                })
            results.append(candidates)
        return results[0] if len(results) == 1 else results


class TextClassificationPipeline(_EncoderPipeline):
    """pipe(text or {"text", "text_pair"}, top_k=1) -> [{"label", "score"}]; a list of inputs gives one dict each
    (top_k > 1 or None: a ranked list each)."""

    def __init__(self, model_path: str | Path | LoadedModel, device: str | None = None):
        super().__init__(model_path, device)
        require_task(self.loaded, "classification", "text-classification", _where(model_path))

    @torch.no_grad()
    def __call__(self, inputs, top_k: int | None = 1):
        single = isinstance(inputs, (str, dict))
        outputs = []
        for item in [inputs] if single else list(inputs):
            text, pair = (item["text"], item.get("text_pair")) if isinstance(item, dict) else (item, None)
            batch = self._encode(text, pair)
            logits = self.model(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"])
            probs = logits[0].float().softmax(-1)
            order = probs.argsort(descending=True).tolist()
            ranked = [{"label": self.loaded.labels[i], "score": probs[i].item()} for i in order[: top_k or len(order)]]
            outputs.append(ranked[0] if top_k == 1 else ranked)
        # as transformers: a single text gives a one-element list (top_k=1) or its ranked list
        return (outputs if top_k == 1 else outputs[0]) if single else outputs


class FeatureExtractionPipeline(_EncoderPipeline):
    """pipe(text or [texts]) -> per text, the last hidden states [seq_len, hidden] (special tokens included)."""

    @torch.no_grad()
    def __call__(self, inputs: str | list[str]):
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        encoder = backbone(self.model)
        outputs = []
        for text in texts:
            batch = self._encode(text)
            hidden = self.loaded.spec.hidden_states(encoder, batch)
            outputs.append(hidden[0].float().cpu())
        return outputs[0] if isinstance(inputs, str) else outputs


class QuestionAnsweringPipeline(_EncoderPipeline):
    """pipe(question=..., context=..., top_k=1) -> {"answer", "score", "start", "end"} (a list of them when top_k > 1;
    lists of questions and contexts give one result each), as transformers 4's question-answering pipeline: long
    contexts in windows of max_seq_len tokens overlapping by doc_stride, spans scored p(start) * p(end) per window,
    at most max_answer_len tokens; handle_impossible_answer adds the null answer ("", 0, 0)."""

    def __init__(self, model_path: str | Path | LoadedModel, device: str | None = None):
        super().__init__(model_path, device)
        require_task(self.loaded, "question_answering", "question-answering", _where(model_path))

    @torch.no_grad()
    def __call__(self, question: str | list[str], context: str | list[str], top_k: int = 1,
                 doc_stride: int | None = None, max_answer_len: int = 15, max_seq_len: int | None = None,
                 handle_impossible_answer: bool = False):
        single = isinstance(question, str)
        questions = [question] if single else list(question)
        contexts = [context] * len(questions) if isinstance(context, str) else list(context)
        if len(contexts) != len(questions):
            raise ValueError(f"question-answering: {len(questions)} questions but {len(contexts)} contexts")
        max_seq_len = min(max_seq_len or 384, self.max_len)  # transformers 4's defaults
        doc_stride = min(max_seq_len // 2, 128) if doc_stride is None else doc_stride
        if doc_stride >= max_seq_len:
            raise ValueError(f"question-answering: doc_stride ({doc_stride}) must be smaller than max_seq_len "
                             f"({max_seq_len})")
        outputs = []
        for q, c in zip(questions, contexts, strict=True):
            windows = self._windows(QAExample("0", q, c, (), (), "the pipeline's input"), max_seq_len, doc_stride)
            answers = pipeline_answers(c, windows, top_k, handle_impossible_answer, max_answer_len)
            outputs.append(answers[0] if top_k == 1 else answers)
        return outputs[0] if single else outputs

    def _windows(self, example: QAExample, max_seq_len: int, doc_stride: int) -> list[Window]:
        features = build_qa_features([example], self.tokenizer, max_seq_len, doc_stride)
        pad = self.tokenizer.pad_id if self.tokenizer.pad_id is not None else 0
        batch = QAFeatureDataset(features, pad)[list(range(len(features)))]
        start, end = self.model(**{k: batch[k].to(self.device) for k in ("input_ids", "token_type_ids",
                                                                         "attention_mask")})
        return [Window(start[i].float().cpu().numpy(), end[i].float().cpu().numpy(), features.offsets[i])
                for i in range(len(features))]


class TokenClassificationPipeline(_EncoderPipeline):
    """pipe(text or [texts], aggregation_strategy="none"|"simple"|"first"|"max"|"average", stride=None) -> per text,
    the entities transformers.pipeline("token-classification") returns: {entity, score, index, word, start, end}
    (none) or {entity_group, score, word, start, end}. A text longer than the model (or max_seq_len) is truncated,
    or with `stride` read in windows overlapping by `stride` tokens whose entities merge (as transformers)."""

    def __init__(self, model_path: str | Path | LoadedModel, device: str | None = None):
        super().__init__(model_path, device)
        require_task(self.loaded, "token_classification", "token-classification", _where(model_path))
        tok = self.tokenizer
        if tok.cls_id is None or tok.sep_id is None:
            raise CheckpointError(f"token-classification: the {tok.kind} tokenizer of {_where(model_path)} has no "
                                  "[CLS]/[SEP] tokens")
        # a `tokenizers` backend (WordPiece) names words from token strings and finds sub-words by their prefix, as
        # transformers does; other kinds group tokens by whitespace-separated words and name words by their text
        self.backend = getattr(tok, "hf", None)

    @torch.no_grad()
    def __call__(self, inputs: str | list[str], aggregation_strategy: str = "none", stride: int | None = None,
                 ignore_labels: tuple[str, ...] = ("O",), max_seq_len: int | None = None):
        max_len = min(max_seq_len or self.max_len, self.max_len)
        if stride is not None and (aggregation_strategy == "none" or not 0 <= stride < max_len - 2):
            raise ValueError(f"stride={stride} needs an aggregation_strategy other than 'none' and 0 <= stride < "
                             f"max_seq_len - 2 = {max_len - 2}")
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        outputs = [self._entities(text, aggregation_strategy, stride, tuple(ignore_labels), max_len) for text in texts]
        return outputs[0] if isinstance(inputs, str) else outputs

    def _entities(self, text: str, strategy: str, stride: int | None, ignore: tuple[str, ...], max_len: int) -> list:
        tok = self.tokenizer
        ids, offsets = tok.encode_with_offsets(text)
        windows = context_windows(len(ids), max_len - 2, stride) if stride is not None else [(0, max_len - 2)]
        word_ids = None if self.backend is not None else token_word_ids(offsets, whitespace_words(text), len(text))
        found = []
        for start, stop in windows:
            input_ids = [tok.cls_id, *ids[start:stop], tok.sep_id]
            spans = [None, *offsets[start:stop], None]
            logits = self.model(input_ids=torch.tensor([input_ids], device=self.device))[0]
            found += aggregate_entities(text, spans, softmax(logits.float().cpu().numpy()), self.loaded.labels,
                                        strategy, ignore_labels=ignore, **self._words(text, input_ids, spans, word_ids,
                                                                                      start, stop))
        return merge_overlapping_entities(found) if len(windows) > 1 else found

    def _words(self, text, input_ids, spans, word_ids, start, stop) -> dict:
        if self.backend is None:
            return {"word_ids": [None, *word_ids[start:stop], None]}
        tokens = [self.backend.id_to_token(i) for i in input_ids]
        prefix = getattr(self.backend.model, "continuing_subword_prefix", None)
        return {"is_subword": subword_flags(text, tokens, spans, prefix), "tokens": tokens,
                "tokens_to_string": self.backend.decoder.decode,
                "unknown": [i == self.tokenizer.unk_id for i in input_ids]}


PIPELINES = {
    "text-generation": TextGenerationPipeline,
    "fill-mask": FillMaskPipeline,
    "text-classification": TextClassificationPipeline,
    "feature-extraction": FeatureExtractionPipeline,
    "question-answering": QuestionAnsweringPipeline,
    "token-classification": TokenClassificationPipeline,
}


def pipeline(task: str, model: str | Path | LoadedModel, device: str | None = None):
    if task not in PIPELINES:
        raise ValueError(f"unknown pipeline task {task!r}; available: {sorted(PIPELINES)}")
    return PIPELINES[task](model, device=device)
