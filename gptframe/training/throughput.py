"""Training throughput and model FLOPs utilization (MFU).

MFU = achieved model FLOP/s per device / the device's dense peak FLOP/s, with the model FLOPs per token from PaLM
(Chowdhery et al. 2022, appendix B), as nanoGPT's `estimate_mfu`:

    flops_per_token = 6 * N + 12 * L * H * Q * T

N: the parameters a token's forward and backward pass multiply by (6 = 2 FLOPs per multiply-add x 3 for forward +
backward); L layers, H heads, Q head dim, T sequence length: the attention score and value matmuls, which have no
parameters. Counted from the config, not the module, so it also holds for sharded (FSDP) or meta-device models.
"""

from __future__ import annotations

import logging
import re
import time

import lightning as L
import torch

from gptframe.registry import architecture_of

log = logging.getLogger("gptframe")


def flops_per_token(config, seq_len: int, lm_head: bool = True) -> float:
    """Training (forward + backward) FLOPs per token at sequence length `seq_len`, as the architecture counts them
    (6N + 12*L*H*Q*T, PaLM). lm_head=False: a per-sequence head (classification) instead of the vocabulary."""
    return architecture_of(config).flops_per_token(config, seq_len, lm_head)


# Dense (no 2:4 sparsity) peak FLOP/s per GPU by matmul dtype, from NVIDIA's datasheets: tensor cores for bf16, fp16
# and TF32, CUDA cores for fp32. A dtype a GPU has no tensor-core path for is absent (V100/T4: no bf16; before Ampere:
# no TF32), as is any GPU we have no reliable dense figure for: such runs log no MFU. We keep our own table because
# Lightning's (lightning.fabric.utilities.throughput._CUDA_FLOPS) lists the H200 and H100 NVL with sparse (2x)
# figures and does not recognise the name an H200 reports ("NVIDIA H200"), so it would give a wrong MFU or none.
_HOPPER_SXM = {"bf16": 989.4e12, "fp16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12}
_HOPPER_NVL = {"bf16": 835.5e12, "fp16": 835.5e12, "tf32": 417.5e12, "fp32": 60e12}  # datasheet: 1671 / 835 sparse
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "h100 sxm": _HOPPER_SXM,
    "h100 pcie": {"bf16": 756e12, "fp16": 756e12, "tf32": 378e12, "fp32": 51.2e12},
    "h100 nvl": _HOPPER_NVL,  # the 94 GB PCIe card (per GPU, not per NVLink pair)
    "h200": _HOPPER_SXM,  # H200 SXM: the H100 SXM's compute with more and faster memory
    "h200 nvl": _HOPPER_NVL,
    "gh200": _HOPPER_SXM,  # Grace Hopper: the GPU is an H100 SXM-class Hopper
    "a100": {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12},  # SXM4 and PCIe, 40 and 80 GB
    "a10": {"bf16": 125e12, "fp16": 125e12, "tf32": 62.5e12, "fp32": 31.2e12},
    # no A10G: AWS's variant of the A10 has lower tensor-core throughput and NVIDIA publishes no datasheet for it
    "l40s": {"bf16": 362.05e12, "fp16": 362.05e12, "tf32": 183e12, "fp32": 91.6e12},
    "l40": {"bf16": 181.05e12, "fp16": 181.05e12, "tf32": 90.5e12, "fp32": 90.5e12},
    "l4": {"bf16": 121e12, "fp16": 121e12, "tf32": 60e12, "fp32": 30.3e12},
    "v100 sxm": {"fp16": 125e12, "fp32": 15.7e12},
    "v100 pcie": {"fp16": 112e12, "fp32": 14e12},
    "v100s": {"fp16": 130e12, "fp32": 16.4e12},
    "t4": {"fp16": 65e12, "fp32": 8.1e12},
}

# torch.cuda.get_device_name() as machines report it -> table key; the first match wins; a bare "NVIDIA H100" (SXM or
# PCIe?) matches nothing.
# e.g. "NVIDIA H100 80GB HBM3" (SXM5), "NVIDIA H100 PCIe", "NVIDIA H100 NVL", "NVIDIA H200", "NVIDIA GH200 480GB",
# "NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB PCIe", "NVIDIA L40S", "Tesla V100-SXM2-16GB", "Tesla T4"
_DEVICE_PATTERNS: list[tuple[str, str]] = [
    (r"\bgh200\b", "gh200"),
    (r"\bh200 nvl\b", "h200 nvl"),
    (r"\bh200\b", "h200"),
    (r"\bh100 nvl\b", "h100 nvl"),
    (r"\bh100\b.*\b(pcie|hbm2e)\b", "h100 pcie"),
    (r"\bh100\b.*\b(hbm3|sxm)", "h100 sxm"),
    (r"\ba100\b", "a100"),
    (r"\ba10\b", "a10"),  # not "a10g", not "a100"
    (r"\bl40s\b", "l40s"),
    (r"\bl40\b", "l40"),
    (r"\bl4\b", "l4"),
    (r"\bv100s\b", "v100s"),
    (r"\bv100\b.*\bpcie", "v100 pcie"),
    (r"\bv100\b.*\bsxm", "v100 sxm"),
    (r"\bt4\b", "t4"),
]


def gpu_kind(device_name: str) -> str | None:
    """The PEAK_FLOPS key for a torch.cuda.get_device_name() string, or None when the table has no such GPU."""
    name = device_name.lower()
    return next((key for pattern, key in _DEVICE_PATTERNS if re.search(pattern, name)), None)


def peak_flops(device_name: str, dtype: str | None) -> float | None:
    """Dense peak FLOP/s of `device_name` for matmuls in `dtype` (bf16, fp16, tf32, fp32); None when unknown
    (a CPU, a GPU not in the table, or a dtype it has no figure for)."""
    kind = gpu_kind(device_name)
    if kind is None or dtype is None:
        return None
    return PEAK_FLOPS[kind].get(dtype)


def compute_dtype(precision: str, cuda_capability: tuple[int, int] | None, float32_matmul_precision: str) -> str | None:
    """The dtype matmuls run in under a Lightning precision: bf16-mixed / bf16-true -> bf16, 16-mixed / 16-true ->
    fp16, 32-true -> tf32 on Ampere or newer unless torch.get_float32_matmul_precision() is 'highest', else fp32."""
    precision = str(precision)
    if precision.startswith("bf16"):
        return "bf16"
    if precision.startswith("16"):
        return "fp16"
    if precision in ("32", "32-true"):
        tf32 = cuda_capability is not None and cuda_capability >= (8, 0) and float32_matmul_precision != "highest"
        return "tf32" if tf32 else "fp32"
    return None  # 64-true, transformer-engine, ...: no figure


def model_flops_utilization(tokens_per_s_per_device: float, flops_per_token: float, peak: float) -> float:
    """MFU from a measured rate (e.g. a benchmark's tokens/s on one device) and the device's peak FLOP/s."""
    return tokens_per_s_per_device * flops_per_token / peak


def batch_tokens(batch) -> int | torch.Tensor:
    """Tokens in a batch: (x, y) blocks, or a dict with input_ids (and attention_mask: real tokens only). A count
    from the mask stays a tensor on the batch's device: reading it every step would stall the GPU."""
    if isinstance(batch, dict):
        mask = batch.get("attention_mask")
        return mask.sum() if mask is not None else batch["input_ids"].numel()
    return batch[0].numel()


def batch_seq_len(batch) -> int:
    return batch["input_ids"].shape[1] if isinstance(batch, dict) else batch[0].shape[1]


class ThroughputMonitor(L.Callback):
    """Training tokens/s and MFU, excluding time spent in validation (gptframe's own, not Lightning's callback of
    the same name, whose peak table gives the H200 and H100 NVL sparse figures). Logs, every log_every_n_steps
    optimizer steps:

    - train/tokens_per_s: all ranks together
    - train/tokens_per_s_per_device: this rank
    - train/tflops_per_device: model FLOPs (flops_per_token) per second on this rank
    - train/mfu: train/tflops_per_device over the device's dense peak, when the peak is known

    Tokens are real tokens (padding excluded), so padding lowers MFU; T in the attention term is the batch's
    (padded) sequence length. The global rate is this rank's times the world size: every rank runs the same number
    of batches of the same shape (for padded batches the real-token counts differ slightly between ranks).
    """

    def __init__(self, log_every_n_steps: int):
        self.log_every_n_steps = log_every_n_steps
        self.total_tokens = 0  # all ranks
        self.total_seconds = 0.0
        self.total_flops = 0.0  # this rank
        self.peak: float | None = None  # this device's dense peak FLOP/s, None when unknown
        self._lm_head = True
        self._flops_by_len: dict[int, float] = {}
        self._window_tokens = 0  # this rank
        self._window_flops = 0.0
        self._window_seconds = 0.0
        self._last: float | None = None

    @property
    def tokens_per_s(self) -> float:
        """Over the whole fit, all ranks (summary.json)."""
        return float(self.total_tokens) / self.total_seconds if self.total_seconds else 0.0

    @property
    def mfu(self) -> float | None:
        """Over the whole fit; None when the device's peak is unknown."""
        if self.peak is None or not self.total_seconds:
            return None
        return float(self.total_flops) / self.total_seconds / self.peak

    def on_train_start(self, trainer, pl_module) -> None:
        self._lm_head = getattr(pl_module, "lm_head_flops", True)
        self._flops_by_len = {}
        device = pl_module.device
        if device.type != "cuda":
            self.peak, why = None, f"training on {device.type}, which has no peak FLOP/s figure"
        else:
            name = torch.cuda.get_device_name(device)
            dtype = compute_dtype(
                trainer.precision, torch.cuda.get_device_capability(device), torch.get_float32_matmul_precision()
            )
            self.peak = peak_flops(name, dtype)
            why = f"no dense peak FLOP/s figure for {name!r} with {dtype or trainer.precision} matmuls"
        if trainer.is_global_zero:
            if self.peak is None:
                log.info("throughput: MFU not reported: %s (gptframe.training.throughput.PEAK_FLOPS)", why)
            else:
                log.info("throughput: MFU against a dense peak of %.1f TFLOP/s per device", self.peak / 1e12)

    def _flops_per_token(self, pl_module, seq_len: int) -> float:
        if seq_len not in self._flops_by_len:
            self._flops_by_len[seq_len] = flops_per_token(pl_module.model_config, seq_len, self._lm_head)
        return self._flops_by_len[seq_len]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self._last is not None:  # the first batch (and the first after validation) only starts the clock
            tokens = batch_tokens(batch)
            flops = tokens * self._flops_per_token(pl_module, batch_seq_len(batch))
            seconds = now - self._last
            self._window_tokens += tokens
            self._window_flops += flops
            self._window_seconds += seconds
            self.total_tokens += tokens * trainer.world_size
            self.total_flops += flops
            self.total_seconds += seconds
        self._last = now
        step_done = (batch_idx + 1) % trainer.accumulate_grad_batches == 0
        if step_done and trainer.global_step % self.log_every_n_steps == 0 and self._window_seconds > 0:
            # counts kept as device tensors are read here, once per logging window
            per_device = float(self._window_tokens) / self._window_seconds
            flops_per_s = float(self._window_flops) / self._window_seconds
            pl_module.log("train/tokens_per_s", per_device * trainer.world_size)
            pl_module.log("train/tokens_per_s_per_device", per_device)
            pl_module.log("train/tflops_per_device", flops_per_s / 1e12)
            if self.peak is not None:
                pl_module.log("train/mfu", flops_per_s / self.peak)
            self._window_tokens, self._window_flops, self._window_seconds = 0, 0.0, 0.0

    def on_validation_start(self, trainer, pl_module) -> None:
        self._last = None
