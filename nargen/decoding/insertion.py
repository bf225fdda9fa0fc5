"""Insertion decoding (Stern et al. 2019): grow a canvas by inserting tokens into the
slots between its tokens, one insertion a pass (sequential) or one in every open slot
a pass (parallel)."""

from __future__ import annotations

from typing import Any, Protocol

import torch

from nargen.decoding.protocol import DecodeResult, SpecialIds, banned_ids, length_caps, pad_rows


class InsertionModel(Protocol):
    """What insertion decoding needs from a model.

    - ``encode(src)``: padded source ids to an encoder state with ``index_select``;
    - ``slot_logits(canvas, encoded, canvas_mask)``: for canvases ``[batch, len]`` of
      ``BOS tokens... EOS`` (right-padded; ``canvas_mask`` True at real positions),
      logits ``[batch, len - 1, vocab]``: row ``s`` scores what to insert between
      canvas positions ``s`` and ``s + 1``; the EOS id means "nothing more here"
      (end of slot).
    """

    def encode(self, src: torch.Tensor) -> Any: ...

    def slot_logits(
        self, canvas: torch.Tensor, encoded: Any, canvas_mask: torch.Tensor
    ) -> torch.Tensor: ...


@torch.inference_mode()
def insertion_decode(
    model: InsertionModel,
    src: torch.Tensor,
    *,
    parallel: bool = True,
    ids: SpecialIds = SpecialIds(),
    max_len_a: float = 1.5,
    max_len_b: int = 10,
    max_len: int = 256,
    banned: tuple[int, ...] = (),
    eos_penalty: float = 0.0,
    keep_history: bool = False,
    close_ended_slots: bool = False,
    last_slot_only: bool = False,
) -> DecodeResult:
    """Start from the empty canvas and insert until the model ends every slot.

    Each pass scores every slot afresh; a slot whose best token is end-of-slot (EOS)
    is closed for that pass, and a sentence ends when all its slots are closed at once
    (Stern et al.). Parallel: every open slot inserts its best token at once; with
    ``close_ended_slots`` a slot that ended stays closed at later passes (the canvas
    around it may have grown since). Sequential: only the open slot whose best token is
    most likely under the joint (slot, token) distribution inserts it.
    ``last_slot_only``: only the last slot is scored (a model trained under the
    left-to-right order, which learned nothing of the others, decodes by appending). A
    sentence stops at its length cap ``a * src_len + b``: the pass that finds it full
    sets ``hit_cap`` when the model still wanted to insert. ``eos_penalty`` (Stern
    et al.'s EOS penalty) is taken off every end-of-slot logit before the choice: a
    slot ends only when ending beats its best insertion by more than the penalty in
    log probability, which counters a model that closes slots too early. The result's
    ``schedule`` holds, for each output position, the pass (0-based) that inserted it;
    with ``keep_history`` its ``history`` holds the tokens after each pass. Ties go to
    the lowest slot, then the lowest token id, so a sentence decodes the same alone or in a
    batch.
    """
    device = src.device
    batch = src.shape[0]
    encoded = model.encode(src)
    caps = length_caps((src != ids.pad).sum(1), max_len_a, max_len_b, max_len - 2).tolist()
    never = banned_ids({ids.pad, ids.bos, *banned} - {ids.eos}, device)
    rows: list[list[int]] = [[] for _ in range(batch)]
    born: list[list[int]] = [[] for _ in range(batch)]
    closed: list[list[bool]] = [[False] for _ in range(batch)]  # per slot
    done, hit_cap = [False] * batch, [False] * batch
    history: list[list[list[int]]] = []
    passes = 0
    while not all(done):
        active = [i for i in range(batch) if not done[i]]
        canvas = pad_rows([[ids.bos, *rows[i], ids.eos] for i in active], ids.pad).to(device)
        enc = encoded if len(active) == batch else encoded.index_select(torch.tensor(active, device=device))
        logits = model.slot_logits(canvas, enc, canvas != ids.pad).float()
        logits.index_fill_(-1, never, float("-inf"))
        if eos_penalty:
            logits[..., ids.eos] -= eos_penalty
        best_logit, best_token = (t.tolist() for t in logits.max(dim=-1))
        for a, i in enumerate(active):
            ends = [best_token[a][s] == ids.eos for s in range(len(rows[i]) + 1)]
            if last_slot_only:
                ends[:-1] = [True] * len(rows[i])
            keep_closed = parallel and close_ended_slots
            closed[i] = [c or e for c, e in zip(closed[i], ends)] if keep_closed else ends
            open_slots = [s for s in range(len(rows[i]) + 1) if not closed[i][s]]
            if not parallel and open_slots:  # the best (slot, token) of the joint distribution
                open_slots = [max(open_slots, key=lambda s: (best_logit[a][s], -s))]
            room = caps[i] - len(rows[i])
            if not open_slots or room == 0:
                done[i] = True
                hit_cap[i] = bool(open_slots)
                continue
            if len(open_slots) > room:  # keep the most confident insertions that fit
                open_slots = sorted(sorted(open_slots, key=lambda s: (-best_logit[a][s], s))[:room])
            for s in reversed(open_slots):  # right to left: earlier slots keep their index
                rows[i].insert(s, best_token[a][s])
                born[i].insert(s, passes)
                closed[i][s : s + 1] = [False, False]
        passes += 1
        if keep_history:
            history.append([list(r) for r in rows])

    return DecodeResult(
        tokens=pad_rows(rows, ids.pad).to(device),
        passes=passes,
        hit_cap=torch.tensor(hit_cap, dtype=torch.bool, device=device),
        history=[pad_rows(step, ids.pad).to(device) for step in history],
        schedule=pad_rows(born, -1).to(device),
    )
