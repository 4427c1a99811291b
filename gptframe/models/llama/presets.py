"""Named Llama shapes (the values of `conf/model/<name>.yaml`): field -> value of LlamaConfig; vocab_size comes from
the tokenizer unless a preset fixes it."""

from __future__ import annotations

PRESETS: dict[str, dict] = {
    # CPU-sized, gpt_micro's parameters (4 x 12 * 192^2 per block, tied embedding) in Llama's layout: grouped-query
    # attention (3 * 192^2) plus a SwiGLU MLP three times as wide as the model (3 * 192 * 576 = 9 * 192^2)
    "llama_micro": dict(block_size=128, n_layer=4, n_head=4, n_kv_head=2, n_embd=192, intermediate_size=576,
                        tie_word_embeddings=True, dropout=0.1),
    # HuggingFaceTB/SmolLM-135M: 134.5M parameters
    "smollm_135m": dict(block_size=2048, vocab_size=49152, n_layer=30, n_head=9, n_kv_head=3, n_embd=576,
                        intermediate_size=1536, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True),
    # meta-llama/Llama-3.2-1B: 1.24B parameters; trained here at a 2048-token context (the checkpoint's rope_scaling
    # is for its 128k context and comes with an import)
    "llama3_1b": dict(block_size=2048, vocab_size=128256, n_layer=16, n_head=32, n_kv_head=8, n_embd=2048,
                      head_dim=64, intermediate_size=8192, rms_norm_eps=1e-5, rope_theta=500000.0,
                      tie_word_embeddings=True),
}
