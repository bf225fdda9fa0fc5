"""Key/value cache for incremental decoding."""

from __future__ import annotations

import torch


class KVCache:
    """Decoder K/V for incremental decoding.

    Self-attention K/V of each slot are written in place into buffers of
    ``[batch, n_kv_heads, capacity, head_dim]`` (``n_kv_heads`` heads, not ``n_heads``),
    grown if a pass writes past ``capacity``; attention reads the written prefix as a
    view, so a step copies only its own positions. Cross-attention K/V are computed once
    per source and kept. A slot is one decoder layer, or a pair of layers when adjacent
    layers share K/V. ``reorder`` follows beam search's choice of hypotheses and copies
    only what has been written.

    With a ``window`` (sliding-window self-attention), positions older than the window
    are dropped: once the buffers hold twice the window, the window before the last pass
    and the pass itself move to the front in one copy, so memory stays within twice the
    window plus a pass, and each step costs the same however long the output grows.
    ``start`` is then the position of the first key held; a rollback (``truncate``) may
    undo the last pass (speculative decoding's verification) and go back to ``start``.
    """

    fixed_shapes = False
    """Passes change the shapes they see (``StaticKVCache`` keeps them fixed)."""

    def __init__(self, slots: int, capacity: int = 0, window: int = 0) -> None:
        self._buffers: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * slots
        self._written = [0] * slots
        self.cross: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * slots
        self.window = window
        self.capacity = min(capacity, 2 * window) if window else capacity
        self.length = 0
        self.start = 0
        """Position of the first self-attention key held (0 unless a window dropped some)."""

    @property
    def keys(self) -> list[torch.Tensor | None]:
        """Each slot's written self-attention keys, ``[batch, n_kv_heads, length, head_dim]``."""
        return [None if b is None else b[0][:, :, :n] for b, n in zip(self._buffers, self._written)]

    @property
    def values(self) -> list[torch.Tensor | None]:
        """Each slot's written self-attention values, as ``keys``."""
        return [None if b is None else b[1][:, :, :n] for b, n in zip(self._buffers, self._written)]

    def append(
        self, slot: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new positions' K/V of ``slot`` after the first ``length``; return
        all its K/V held (views of the buffers), from position ``start``."""
        start, end = self.length - self.start, self.length - self.start + k.shape[2]
        buffers = self._buffers[slot]
        if buffers is None or end > buffers[0].shape[2] or buffers[0].shape[0] != k.shape[0]:
            size = max(end, self.capacity, 2 * buffers[0].shape[2] if buffers is not None else 0)
            grown = tuple(t.new_empty(t.shape[0], t.shape[1], size, t.shape[3]) for t in (k, v))
            if buffers is not None and start:
                for new, old in zip(grown, buffers):
                    new[:, :, :start] = old[:, :, :start]
            buffers = self._buffers[slot] = grown
        buffers[0][:, :, start:end] = k
        buffers[1][:, :, start:end] = v
        self._written[slot] = end
        return buffers[0][:, :, :end], buffers[1][:, :, :end]

    def advance(self, steps: int) -> None:
        """Mark ``steps`` more positions as written (called once per decoder pass); with a
        window, drop what no later query can see once twice the window is held."""
        self.length += steps
        held = self.length - self.start
        keep = self.window + steps  # a rollback may undo this pass: keep the window before it
        if self.window and held >= 2 * self.window and held > keep:
            drop = held - keep
            for slot, buffers in enumerate(self._buffers):
                if buffers is None:
                    continue
                for buffer in buffers:
                    buffer[:, :, :keep] = buffer[:, :, drop:held].clone()
                self._written[slot] = keep
            self.start += drop

    def truncate(self, length: int) -> None:
        """Forget self-attention K/V beyond the first ``length`` positions (speculative
        decoding rolls back to what it accepted)."""
        if length > self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} positions to {length}")
        if length < self.start:
            raise ValueError(f"cannot roll back to position {length}: the window dropped "
                             f"everything before position {self.start}")
        self._written = [min(n, length - self.start) for n in self._written]
        self.length = length

    def keep_columns(self, start: int, columns: torch.Tensor) -> None:
        """Move row ``i``'s K/V at positions ``start + columns[i]`` to positions
        ``start, start + 1, ...`` (``columns``: ``[batch, n]``, increasing): a pass that
        checked a tree of drafts keeps the branch it accepted. Call ``truncate`` after."""
        at = start - self.start
        for buffers in self._buffers:
            if buffers is None:
                continue
            shape = buffers[0].shape
            index = (columns + at)[:, None, :, None].expand(shape[0], shape[1], -1, shape[3])
            for buffer in buffers:
                buffer[:, :, at : at + columns.shape[1]] = buffer.gather(2, index)

    def reorder(self, indices: torch.Tensor, cross: bool | torch.Tensor = True) -> None:
        """Keep batch rows ``indices`` (in that order); rows may repeat or drop out.

        The cross-attention K/V follow ``indices`` (``cross=True``), stay as they are
        (``False``: ``indices`` only moves rows among copies of the same source, beams of
        one sentence), or keep the source rows given as a tensor (a decoder that groups
        its rows by source keeps one cross-attention row per source).
        """
        for slot, (buffers, n) in enumerate(zip(self._buffers, self._written)):
            if buffers is None:
                continue
            moved = []
            for old in buffers:
                new = old.new_empty(indices.shape[0], *old.shape[1:])
                if torch.is_grad_enabled():  # out= does not record gradients
                    new[:, :, :n] = old[:, :, :n].index_select(0, indices)
                else:
                    torch.index_select(old[:, :, :n], 0, indices, out=new[:, :, :n])
                moved.append(new)
            self._buffers[slot] = (moved[0], moved[1])
        sources = cross if isinstance(cross, torch.Tensor) else indices if cross else None
        if sources is not None:
            self.cross = [
                None if kv is None else (kv[0].index_select(0, sources), kv[1].index_select(0, sources))
                for kv in self.cross
            ]

    def self_attention_elements(self) -> int:
        """Number of cached self-attention K/V elements written so far."""
        return sum(t.numel() for t in self.keys + self.values if t is not None)


class StaticKVCache:
    """Decoder K/V in buffers of a fixed ``capacity``, with the next position to write
    held on the device: every decoder pass of one width has the same shapes and reads
    nothing back, so it can be compiled once (``torch.compile``; on a GPU, captured as a
    CUDA graph) and replayed step after step.

    A pass writes its K/V at ``position`` (``index_copy_``) and attends to all
    ``capacity`` slots through ``key_mask``, which hides the slots not yet written; the
    attention over empty slots is the price of fixed shapes, small next to a step's
    launch and dispatch costs at translation lengths. No window (``start`` is always 0).
    """

    fixed_shapes = True
    window = 0
    start = 0

    def __init__(
        self, slots: int, batch: int, n_kv_heads: int, head_dim: int, capacity: int,
        dtype: torch.dtype, device: torch.device,
    ) -> None:
        shape = (batch, n_kv_heads, capacity, head_dim)
        self._keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(slots)]
        self._values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(slots)]
        self.cross: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * slots
        self.capacity = capacity
        self.position = torch.zeros(1, dtype=torch.long, device=device)
        """The next position to write, ``[1]`` on the device."""
        self._slots = torch.arange(capacity, device=device)
        if self.position.is_cuda:  # CUDA graphs replay with these addresses
            for buffer in (*self._keys, *self._values, self.position):
                torch._dynamo.mark_static_address(buffer)

    @property
    def length(self) -> torch.Tensor:
        """Positions written so far, as a ``[1]`` device tensor (the offset of the next
        pass's positions)."""
        return self.position

    def positions(self, queries: int) -> torch.Tensor:
        """The positions of the next pass's ``queries`` queries, ``[queries]``."""
        return self.position + self._slots[:queries]

    def key_mask(self, queries: int) -> torch.Tensor:
        """``[1, 1, queries, capacity]``: True where a query of the next pass may attend
        (slots written before it, and its own and earlier ones of the pass)."""
        return (self._slots[None, :] <= self.positions(queries)[:, None])[None, None]

    def append(self, slot: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the pass's K/V of ``slot`` at ``position``; return the whole buffers."""
        at = self.positions(k.shape[2])
        self._keys[slot].index_copy_(2, at, k.to(self._keys[slot].dtype))
        self._values[slot].index_copy_(2, at, v.to(self._values[slot].dtype))
        return self._keys[slot], self._values[slot]

    def advance(self, steps: int) -> None:
        """Move the write position ``steps`` on (once per decoder pass), on the device."""
        self.position.add_(steps)

    def truncate(self, length: int) -> None:
        """Forget the K/V beyond the first ``length`` positions (later passes overwrite them)."""
        self.position.fill_(length)

    def tree_mask(self, within: torch.Tensor) -> torch.Tensor:
        """``[batch, queries, capacity]``: what each query of a pass over a draft tree
        sees (``nargen.core.tree``), from ``within`` (``[batch, queries, queries]``, what
        each query sees of the pass itself): every slot written before ``position``, and
        the pass's own slots ``within`` lets it see. Read nothing back."""
        queries = within.shape[1]
        offset = self._slots - self.position  # each slot's place in the pass, negative before it
        inside = (offset >= 0) & (offset < queries)
        seen = within.index_select(2, offset.clamp(0, queries - 1)) & inside
        return seen | (offset < 0)

    def keep_columns(self, start: int, columns: torch.Tensor) -> None:
        """Move row ``i``'s K/V at slots ``start + columns[i]`` to slots ``start, start +
        1, ...``, in place, as ``KVCache.keep_columns``; call ``truncate`` after."""
        for buffer in (*self._keys, *self._values):
            shape = buffer.shape
            index = (columns + start)[:, None, :, None].expand(shape[0], shape[1], -1, shape[3])
            buffer[:, :, start : start + columns.shape[1]] = buffer.gather(2, index)

    def reorder(self, indices: torch.Tensor, cross: bool | torch.Tensor = True) -> None:
        """Keep batch rows ``indices``, as ``KVCache.reorder``. On a GPU the buffers keep
        their addresses (rows are gathered, then copied back in place) while the batch
        keeps its size, so a captured CUDA graph stays valid."""
        for buffers in (self._keys, self._values):
            for i, old in enumerate(buffers):
                moved = old.index_select(0, indices)
                if moved.shape == old.shape and moved.is_cuda:
                    old.copy_(moved)
                else:
                    buffers[i] = moved
                    if moved.is_cuda:
                        torch._dynamo.mark_static_address(moved)
        sources = cross if isinstance(cross, torch.Tensor) else indices if cross else None
        if sources is not None:
            self.cross = [
                None if kv is None else (kv[0].index_select(0, sources), kv[1].index_select(0, sources))
                for kv in self.cross
            ]

    @property
    def keys(self) -> list[torch.Tensor]:
        """Each slot's key buffer, all ``capacity`` slots (written or not)."""
        return list(self._keys)

    @property
    def values(self) -> list[torch.Tensor]:
        """Each slot's value buffer, as ``keys``."""
        return list(self._values)

    def self_attention_elements(self) -> int:
        """Number of self-attention K/V elements held (the whole buffers)."""
        return sum(t.numel() for t in self._keys + self._values)


class CanvasKVCache:
    """K/V of a bidirectional decoder's canvas, kept from one pass of iterative decoding
    to the next (mask-predict, the unmasking samplers).

    Cross-attention K/V are made once per source and reused by every pass: exact. A
    pass over the whole canvas (``length`` 0) stores every position's self-attention
    K/V; a pass over a span of columns only (``length``: the span's first column)
    recomputes the span's K/V in place and attends to the stored K/V of the columns
    outside it. That is Fast-dLLM's dual cache (Wu et al. 2025): exact for one decoder
    layer, whose K/V of a position depend on that position's token alone, and an
    approximation above it, where the stored K/V were computed while the span held
    other tokens. A decoder with a window decodes without it.
    """

    fixed_shapes = False

    def __init__(self, slots: int) -> None:
        self._held: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * slots
        self.cross: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * slots
        self.length = 0
        """The first column of the next pass (0: the whole canvas)."""

    def append(self, slot: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep a whole-canvas pass's K/V of ``slot``, or write a span's into the kept
        ones; return the canvas's K/V."""
        held = self._held[slot]
        if self.length == 0 and (held is None or k.shape[2] == held[0].shape[2]):
            self._held[slot] = (k, v)
            return k, v
        if held is None or self.length + k.shape[2] > held[0].shape[2]:
            raise ValueError("a pass over a span of the canvas needs a whole-canvas pass before it")
        end = self.length + k.shape[2]
        held[0][:, :, self.length:end] = k
        held[1][:, :, self.length:end] = v
        return held

    def advance(self, steps: int) -> None:
        """Nothing to move: each pass says where it starts (``length``)."""
