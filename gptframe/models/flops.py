"""Model FLOPs per token, counted as PaLM (appendix B) and nanoGPT's `estimate_mfu` count them."""


def palm_flops_per_token(matmul_params: int, n_layer: int, n_head: int, head_dim: int, seq_len: int) -> float:
    """Training (forward + backward) FLOPs per token: 6 per weight of every matmul, plus attention's QK^T and AV
    (2 matmuls x 2 FLOPs x 3 for forward + backward = 12 per layer, head and head dimension, per attended position)."""
    return 6 * matmul_params + 12 * n_layer * n_head * head_dim * seq_len
