"""Where a step's time goes: ``torch.profiler`` events grouped by the module they ran in
and by operator, forward and backward apart, plus the time no operator ran (Python).

Modules are marked with profiler regions by qualified-name rules (``label_regions``);
backward operators are traced to the forward operator that recorded them through
autograd's sequence numbers, so a backward matrix product lands in the same group as
its forward one. Imports only torch, so it also runs beside other toolkits (the fairseq
profile in ``benchmarks/``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import nn

HOST_READS = ("aten::_local_scalar_dense", "aten::item", "aten::nonzero", "aten::is_nonzero")
"""Profiler events of a read of a device value by the host (a synchronisation on a GPU)."""

REGION = "region:"
"""Prefix of the profiler regions ``label_regions`` opens."""

# Region labels and the module names that get them: nargen's core, then fairseq's
# transformer (the peer toolkit), first match wins.
NARGEN_REGIONS: list[tuple[str, str]] = [
    (r"(^|\.)rotary$", "rotary"),
    (r"(^|\.)(attn|self_attn|cross_attn)$", "attention"),
    (r"(^|\.)ffn$", "ffn"),
    (r"norm$", "norm"),
    (r"(^|\.)dropout$", "dropout"),
    (r"(^|\.)embed$", "embedding"),
    (r"^$", "model"),
]
FAIRSEQ_REGIONS: list[tuple[str, str]] = [
    (r"(^|\.)(self_attn|encoder_attn)$", "attention"),
    (r"(^|\.)(fc1|fc2)$", "ffn"),
    (r"layer_norm$", "norm"),
    (r"dropout_module$", "dropout"),
    (r"(^|\.)embed_tokens$", "embedding"),
    (r"(^|\.)embed_positions$", "rotary"),
    (r"(^|\.)output_projection$", "output"),
    (r"^$", "model"),
]

_KERNEL_OPS = ("scaled_dot_product", "bmm", "baddbmm", "softmax", "multi_head_attention")
_MATMUL_OPS = ("linear", "addmm", "matmul", "aten::mm")
_LOSS_OPS = ("cross_entropy", "log_softmax", "nll_loss", "gather", "label_smooth", "projectedcrossentropy")
_FUSED_LOSS = "_ProjectedCrossEntropy"
"""``nargen.core.projected_loss``'s operation: what runs inside it is grouped by itself,
its matrix products as the output projection and the rest as the loss."""
_ACTIVATION_OPS = ("relu", "silu", "gelu")
_CLIP_OPS = ("_foreach_norm", "linalg_vector_norm", "clip_grad", "isfinite", "clamp")

GROUPS = (
    "attention kernel (SDPA, or bmm + softmax)", "attention projections (Q, K, V, out)",
    "attention reshapes and masks", "positions (rotary or sinusoidal)", "norms",
    "FFN matrix products", "FFN activation (SwiGLU gate or ReLU)", "dropout",
    "embedding lookup", "output projection", "loss (label-smoothed cross-entropy)",
    "other ops of the forward step (residuals, scaling, masks)",
    "optimizer (AdamW step, zero_grad, gradient accumulation)",
    "gradient norm and clipping", "host ops outside the model (batches, logging)",
    "Python and framework (no operator running)",
)


def group_of(region: str | None, op: str) -> str:
    """The group of operator ``op`` that ran (as a top-level call) in ``region``; a
    region this module does not know (e.g. a whole training step) counts as none."""
    low = op.lower()
    matmul = any(k in low for k in _MATMUL_OPS)
    if region == "attention":
        if any(k in low for k in _KERNEL_OPS):
            return GROUPS[0]
        return GROUPS[1] if matmul else GROUPS[2]
    if region == "rotary":
        return GROUPS[3]
    if any(k in low for k in _CLIP_OPS) or low == "aten::norm":
        return GROUPS[13]
    if region == "norm" or "norm" in low:
        return GROUPS[4]
    if any(k in low for k in _ACTIVATION_OPS):
        return GROUPS[6]
    if region == "ffn":
        return GROUPS[5] if matmul else GROUPS[6]
    if region == "dropout" or "dropout" in low:
        return GROUPS[7]
    if region == "embedding" or "embedding" in low:
        return GROUPS[8]
    if region == "output" or region in ("model", "step") and matmul:
        return GROUPS[9]
    if region == "loss" or any(k in low for k in _LOSS_OPS):
        return GROUPS[10]
    if region in ("model", "step"):
        return GROUPS[11]
    if region == "optimizer":
        return GROUPS[12]
    return GROUPS[14]


class _Region:
    """Profiler region open from a module's forward pre-hook to its forward hook."""

    def __init__(self, label: str) -> None:
        self.label = REGION + label
        self.open: list[Any] = []

    def enter(self, *_: Any) -> None:
        region = torch.autograd.profiler.record_function(self.label)
        region.__enter__()
        self.open.append(region)

    def exit(self, *_: Any) -> None:
        self.open.pop().__exit__(None, None, None)


def label_regions(model: nn.Module, rules: list[tuple[str, str]]) -> Callable[[], None]:
    """Open a profiler region named after the first rule whose pattern matches each
    submodule's qualified name (``""`` is ``model`` itself); returns a function that
    removes the hooks again."""
    handles = []
    for name, module in model.named_modules():
        label = next((lab for pattern, lab in rules if re.search(pattern, name)), None)
        if label is None:
            continue
        region = _Region(label)
        handles.append(module.register_forward_pre_hook(region.enter))
        handles.append(module.register_forward_hook(region.exit))

    def remove() -> None:
        for handle in handles:
            handle.remove()

    return remove


@dataclass
class StepProfile:
    """Milliseconds per step by group, forward and backward apart."""

    steps: int
    wall_ms: float
    forward: dict[str, float] = field(default_factory=dict)
    backward: dict[str, float] = field(default_factory=dict)
    tokens: float = 0.0
    """Target tokens per step (padding excluded), when the caller counted them."""
    attention: dict[str, float] = field(default_factory=dict)
    """Attention score elements per step of one head and layer, padding included, when
    the caller counted them (``attention_elements``): what the attention kernel's cost
    grows with, so two profiles over different batches can be compared."""

    def rows(self) -> list[dict[str, Any]]:
        """One row per group that took time: ms per step forward, backward, total, share."""
        out = []
        for group in GROUPS:
            fwd, bwd = self.forward.get(group, 0.0), self.backward.get(group, 0.0)
            if fwd + bwd <= 0:
                continue
            out.append({"group": group, "forward_ms": round(fwd, 2), "backward_ms": round(bwd, 2),
                        "total_ms": round(fwd + bwd, 2),
                        "share": round((fwd + bwd) / self.wall_ms, 3) if self.wall_ms else 0.0})
        return out

    def markdown(self, title: str, unit: str = "step") -> str:
        """The rows as a Markdown table under ``title`` (``unit``: what one step is)."""
        per = f", {self.tokens:.0f} target tokens per {unit}" if self.tokens else ""
        lines = [f"{title}: {self.wall_ms:.1f} ms per {unit} over {self.steps} {unit}s{per}", "",
                 "| group | forward ms | backward ms | total ms | share |"
                 + (" ms per 1k target tokens |" if self.tokens else ""),
                 "| --- | ---: | ---: | ---: | ---: |" + (" ---: |" if self.tokens else "")]
        if self.attention and self.tokens:
            per_token = ", ".join(f"{name} {value / self.tokens:.1f}" for name, value in self.attention.items())
            lines[0] += f"; attention score elements per target token (one head, one layer): {per_token}"
        for r in self.rows():
            line = (f"| {r['group']} | {r['forward_ms']:.2f} | {r['backward_ms']:.2f} | "
                    f"{r['total_ms']:.2f} | {100 * r['share']:.1f}% |")
            if self.tokens:
                line += f" {1000 * r['total_ms'] / self.tokens:.2f} |"
            lines.append(line)
        return "\n".join(lines)


def attention_elements(src_shape: tuple[int, ...], tgt_shape: tuple[int, ...]) -> dict[str, float]:
    """Score elements of one head in one layer for a padded batch of sources
    ``[batch, S]`` and target inputs ``[batch, T]``: encoder self-attention ``B·S²``,
    decoder self-attention ``B·T²`` (a causal kernel may skip about half) and
    cross-attention ``B·T·S``."""
    (batch, s), (_, t) = src_shape[:2], tgt_shape[:2]
    return {"encoder": float(batch * s * s), "decoder": float(batch * t * t), "cross": float(batch * t * s)}


def add_counts(total: dict[str, float], more: dict[str, float]) -> None:
    """Add ``more`` into ``total`` key by key."""
    for key, value in more.items():
        total[key] = total.get(key, 0.0) + value


def _owner(event: Any) -> tuple[str | None, str | None, Any]:
    """Innermost region above ``event`` (``None`` when there is none), the outermost
    operator below it (the call the module made), and the backward node above it."""
    top = None
    inside_fused = False
    node = event
    while node is not None:
        name = node.name
        if name.startswith(REGION):
            return name[len(REGION):], top, None
        if name.startswith("Optimizer."):
            return "optimizer", top, None
        if name.startswith("autograd::engine::evaluate_function"):
            return None, top, node
        if name == _FUSED_LOSS and top is not None:
            top = top if any(k in top.lower() for k in _MATMUL_OPS) else "label_smooth"
            inside_fused = True
        elif not inside_fused:
            top = name
        node = node.cpu_parent
    return None, top, None


def summarize(events: Iterable[Any], steps: int, wall_seconds: float) -> StepProfile:
    """Group the self time of profiler ``events`` (``prof.events()``) of ``steps`` steps
    that took ``wall_seconds``; the rest of the wall time is Python and framework."""
    events = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU]
    forward_group: dict[int, str] = {}
    for e in events:  # parents come before their children: the outermost call names it
        if e.sequence_nr >= 0:
            region, top, backward = _owner(e)
            if backward is None:
                forward_group.setdefault(e.sequence_nr, group_of(region, top or e.name))
    profile = StepProfile(steps=steps, wall_ms=1000.0 * wall_seconds / steps)
    busy = 0.0
    for e in events:
        if e.name.startswith((REGION, "Optimizer.")):
            continue  # a region's own time is Python (hooks, the step's own code)
        ms = e.self_cpu_time_total / 1000.0 / steps
        busy += ms
        region, top, backward = _owner(e)
        if backward is not None:
            group = forward_group.get(backward.sequence_nr, GROUPS[14])
            if "AccumulateGrad" in backward.name:
                group = GROUPS[12]
            profile.backward[group] = profile.backward.get(group, 0.0) + ms
        else:
            group = group_of(region, top or e.name)
            profile.forward[group] = profile.forward.get(group, 0.0) + ms
    profile.forward[GROUPS[15]] = max(0.0, profile.wall_ms - busy)
    return profile


def host_reads(fn: Callable[[], Any]) -> tuple[int, Any]:
    """``fn()``'s reads of device values by the host, and its result: ``HOST_READS``
    profiler events plus its ``Tensor.tolist`` calls (one transfer each on a GPU; on a
    CPU they leave no such event). On a CPU the reads cost nothing but are counted
    exactly as a GPU would have to wait for them."""
    calls = 0
    tolist = torch.Tensor.tolist

    def counted(self: torch.Tensor) -> Any:
        nonlocal calls
        calls += 1
        return tolist(self)

    torch.Tensor.tolist = counted  # type: ignore[method-assign]
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            result = fn()
    finally:
        torch.Tensor.tolist = tolist  # type: ignore[method-assign]
    return sum(e.name in HOST_READS for e in prof.events()) + calls, result
