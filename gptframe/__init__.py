"""gptframe: config-driven pretraining of GPT models with Hydra and Lightning."""

__version__ = "0.1.0"


def pipeline(task: str, model, device=None):
    """transformers-style inference: `pipeline("text-generation", model="run/checkpoints/last.ckpt")`."""
    from gptframe.inference.pipelines import pipeline as _pipeline

    return _pipeline(task, model, device=device)


__all__ = ["pipeline", "__version__"]
