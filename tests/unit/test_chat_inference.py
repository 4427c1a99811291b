"""chat_replies: the prompt SFT trains on, any decoding strategy, the reply up to the end of the turn."""

import string

import torch

from data_pipelines.sft import ChatTemplate
from data_pipelines.tokenizers import CharTokenizer, with_chat_template
from gptframe.inference.chat import chat_replies
from gptframe.inference.decoding import GenerationSettings, generate
from gptframe.models.gpt import GPT, GPTConfig

CONVERSATIONS = [
    [{"role": "user", "content": "hi there"}],
    [{"role": "system", "content": "be brief."}, {"role": "user", "content": "what is a cat?"}],
]


def _setup():
    tokenizer = with_chat_template(CharTokenizer(list(string.ascii_lowercase + " .,!?\n"), with_eos=True))
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=128, vocab_size=tokenizer.vocab_size, n_layer=2, n_head=2, n_embd=32)).eval()
    return model, tokenizer


def test_replies_are_the_generated_turn_without_its_end_token():
    model, tokenizer = _setup()
    prompts = [ChatTemplate(tokenizer).prompt_ids(c) for c in CONVERSATIONS]
    assert tokenizer.decode(prompts[0]) == "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n"
    ends = [tokenizer.end_of_turn_id, tokenizer.eos_id]
    settings = GenerationSettings(max_new_tokens=12, num_beams=2)
    expected = generate(model, prompts, GenerationSettings(max_new_tokens=12, num_beams=2, eos_token_id=ends))
    assert chat_replies(model, tokenizer, CONVERSATIONS, settings) == [
        [tokenizer.decode(seq[:-1] if seq[-1] in ends else seq)] for (seq,) in expected]
    # sampling, with an end token the model does produce: the reply stops before it
    sampling = dict(max_new_tokens=12, do_sample=True, vocab_size=tokenizer.vocab_size)
    (free,), _ = generate(model, prompts, GenerationSettings(**sampling), generator=torch.Generator().manual_seed(0))
    end = next(t for i, t in enumerate(free) if i >= 2 and t not in free[:i])
    (reply,), _ = chat_replies(model, tokenizer, CONVERSATIONS, GenerationSettings(eos_token_id=end, **sampling),
                               generator=torch.Generator().manual_seed(0))
    assert reply == tokenizer.decode(free[: free.index(end)])
