"""Training plumbing around the plain models: trainer, callbacks, checkpoints, parallelize, the run itself."""
