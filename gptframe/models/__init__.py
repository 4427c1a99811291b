"""Plain-PyTorch models, one package per architecture (`gpt/`, `bert/`, `llama/`), each registering its
`ArchitectureSpec` (gptframe.registry). Nothing here imports Lightning or torch.distributed."""
