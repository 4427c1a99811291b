"""launch/slurm/pipeline.sbatch on two nodes x one rank: pretraining and fine-tuning as 2-process DDP jobs under srun,
data preparation and export once, everything in the job's pipeline dir."""

from __future__ import annotations

import json

# The tiny GPT pipeline of tests/integration/test_pipeline_script.py.
GPT_PIPELINE = [
    "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=5",
    "pretrain.tokenizer.vocab_size=512", "pretrain.model=gpt_nano", "pretrain.model.n_layer=2",
    "pretrain.model.n_embd=32", "pretrain.model.n_head=2", "pretrain.model.block_size=32",
    "pretrain.trainer.max_steps=20", "pretrain.trainer.val_check_interval=10", "pretrain.trainer.eval_batches=2",
    "pretrain.trainer.final_eval_batches=4", "finetune.trainer.max_epochs=1", "finetune.task.max_seq_len=32",
    "finetune.data.batch_size=64",
]


def test_pipeline_sbatch_pretrains_fine_tunes_and_exports_on_two_nodes(slurm, cache_dir, tmp_path):
    job = slurm.sbatch("pipeline.sbatch", "gpt", f"data.cache_dir={cache_dir}", *GPT_PIPELINE)
    slurm.wait_finished(job, timeout=300)
    out = job.out.read_text()

    pipeline = tmp_path / "outputs" / "slurm" / f"gptframe-pipeline-{job.id}"  # named after the job
    pre = json.loads((pipeline / "pretrain" / "summary.json").read_text())
    fine = json.loads((pipeline / "finetune" / "summary.json").read_text())
    assert (pre["world_size"], pre["num_nodes"], pre["step"]) == (2, 2, 20), pre
    assert (fine["world_size"], fine["num_nodes"]) == (2, 2), fine
    assert (pipeline / "pretrain" / "checkpoints" / "last.ckpt").is_file()
    assert (pipeline / "finetune" / "checkpoints" / "last.ckpt").is_file()
    assert fine["init_from"] == str(pipeline / "pretrain" / "checkpoints" / "last.ckpt")
    for export in ("pretrained", "finetuned"):
        for name in ("config.json", "model.safetensors"):
            assert (pipeline / "export" / export / name).is_file(), f"export/{export}/{name} missing\n{job.log_tail()}"
    assert json.loads((pipeline / "export" / "finetuned" / "config.json").read_text())["architectures"] == [
        "GPT2ForSequenceClassification"
    ]
    # srun ran the two training stages; the data stage and the exports ran once, in the batch shell
    srun = "srun --kill-on-bad-exit=1 --cpus-per-task=1 gptframe-train"  # every rank gets the job's cpus-per-task
    assert out.count(f"[pipeline gpt] pretrain: {srun}") == 1, job.log_tail()
    assert out.count(f"[pipeline gpt] finetune: {srun}") == 1
    assert out.count("[pipeline gpt] data: python -m data_pipelines") == 1
    assert out.count("[pipeline gpt] export-pretrained: gptframe-export") == 1
    assert json.loads((pipeline / "results.json").read_text())["pretrain_steps"] == 20
