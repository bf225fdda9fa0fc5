"""Training throughput: target tokens per second, peak memory (host and GPU), model FLOPs
utilisation, and when the first update ended."""

from __future__ import annotations

import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

# Dense bf16 peak FLOP/s by GPU name fragment, for model FLOPs utilisation.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB (host memory, not the GPU's)."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024 if sys.platform != "darwin" else kib / 2**20  # macOS counts bytes


def process_age_seconds() -> float | None:
    """Seconds since this process started (Linux, from ``/proc``; None elsewhere): the
    start-up a user waits through, imports included."""
    try:
        after_name = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(after_name[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start, in ticks since boot
        return time.clock_gettime(time.CLOCK_BOOTTIME) - started
    except (OSError, ValueError, IndexError, AttributeError):
        return None


class ThroughputMonitor(L.Callback):
    """Counts target tokens over training time (validation excluded).

    FLOPs per step are estimated as 6 x parameters x tokens, split between the
    encoder (source tokens) and the decoder and output layer (target tokens).
    """

    def __init__(self, skip_steps: int = 0) -> None:
        self.skip_steps = skip_steps
        """Steps not counted (warm-up), e.g. for a throughput benchmark."""
        self.target_tokens = 0
        self.seconds = 0.0
        self.flops = 0.0
        self._last: float | None = None
        self._enc_params = self._dec_params = 0
        self.processes = 1
        """Processes whose counts ``gather`` summed."""
        self.first_update_unix: float | None = None
        """Wall-clock time (``time.time()``) when the first update of this run ended."""
        self.process_age_at_first_update: float | None = None
        """Seconds from this process's start to the end of its first update (where known)."""
        self.peak_rss_mib: list[float] = [peak_rss_mib()]
        """Peak resident memory of each process (filled in by ``gather``)."""
        self._pending: torch.Tensor | None = None
        """Target and source tokens counted on the device since the last read: read once
        per logging interval, not once per step (each read waits for the device)."""

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        model = module.model
        self._enc_params = sum(p.numel() for p in model.encoder_layers.parameters())
        self._dec_params = sum(p.numel() for p in model.decoder_layers.parameters())
        self._dec_params += model.embed.weight.numel()  # tied output projection
        if module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(module.device)

    def _restart_clock(self, *_: Any) -> None:
        self._last = time.perf_counter()

    on_train_epoch_start = _restart_clock
    on_validation_end = _restart_clock

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        now = time.perf_counter()
        if self.first_update_unix is None:
            self.first_update_unix = time.time()
            self.process_age_at_first_update = process_age_seconds()
        counted = trainer.global_step > self.skip_steps
        if self._last is not None and counted:
            self.seconds += now - self._last
        self._last = now
        if not counted:
            return
        pad = module.ids.pad
        counts = torch.stack([(batch["tgt_out"] != pad).sum(), (batch["src"] != pad).sum()])
        self._pending = counts if self._pending is None else self._pending + counts
        if trainer.global_step % max(trainer.log_every_n_steps, 1) == 0:
            self._read_counts()
            if self.seconds > 0:  # all processes: this one's rate times their number
                module.log("train_tok_s", self.target_tokens * trainer.world_size / self.seconds,
                           prog_bar=True)

    def counted(self) -> tuple[int, float]:
        """Target tokens and training seconds so far (reads the device's counts)."""
        self._read_counts()
        return self.target_tokens, self.seconds

    def _read_counts(self) -> None:
        """Fold the device-side token counts into the totals (one host read)."""
        if self._pending is None:
            return
        tgt, src = self._pending.tolist()
        self._pending = None
        self.target_tokens += tgt
        self.flops += 6.0 * (self._enc_params * src + self._dec_params * tgt)

    def gather(self, trainer: L.Trainer) -> None:
        """Totals over every process of a multi-process run (tokens and FLOPs summed,
        the slowest process's seconds); call on every process."""
        self._read_counts()
        self.peak_rss_mib = [peak_rss_mib()]
        if trainer.world_size == 1:
            return
        rss = torch.tensor([self.peak_rss_mib[0]], dtype=torch.float64, device=trainer.strategy.root_device)
        self.peak_rss_mib = trainer.strategy.all_gather(rss).flatten().tolist()
        totals = torch.tensor([float(self.target_tokens), self.flops], dtype=torch.float64)
        seconds = torch.tensor([self.seconds], dtype=torch.float64)
        totals = trainer.strategy.reduce(totals.to(trainer.strategy.root_device), reduce_op="sum")
        seconds = trainer.strategy.reduce(seconds.to(trainer.strategy.root_device), reduce_op="max")
        self.target_tokens, self.flops = int(totals[0].item()), float(totals[1].item())
        self.seconds = float(seconds.item())
        self.processes = trainer.world_size

    def summary(self, device: torch.device) -> dict[str, Any]:
        """Totals, rate, and on a GPU peak memory and MFU; ``device``: the one trained on
        (the strategy's, not the module's: Lightning moves the module back to the CPU
        when fitting ends)."""
        self._read_counts()
        rate = self.target_tokens / self.seconds if self.seconds else 0.0
        out: dict[str, Any] = {
            "target_tokens": self.target_tokens,
            "train_seconds": round(self.seconds, 1),
            "target_tokens_per_s": round(rate, 1),
            "peak_rss_mib": [round(x) for x in self.peak_rss_mib],
        }
        if device.type == "cuda":
            out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
            peak = peak_flops(device)
            if peak and self.seconds:
                out["mfu"] = round(self.flops / self.seconds / (peak * self.processes), 4)
        return out
