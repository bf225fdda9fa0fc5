"""Insertion decoding (Stern et al. 2019): grow a canvas by inserting tokens into the
slots between its tokens, one insertion a pass (sequential) or one in every open slot
a pass (parallel)."""

from __future__ import annotations

from typing import Any, Protocol

import torch

from nargen.decoding.protocol import DecodeResult, SpecialIds, length_caps


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


def _pad_rows(rows: list[list[int]], pad: int) -> torch.Tensor:
    """Lists of ids as one right-padded ``[len(rows), longest]`` tensor."""
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), width), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


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
) -> DecodeResult:
    """Start from the empty canvas and insert until the model ends every slot.

    Sequential: each pass inserts the single most likely (slot, token) pair under the
    joint distribution over all slots and tokens, and decoding of a sentence ends when
    that pair's token is end-of-slot (EOS). Parallel: each pass inserts the most likely
    token of every open slot at once; a slot whose best token is end-of-slot closes for
    good, and a sentence ends when all its slots are closed. A sentence stops at its
    length cap ``a * src_len + b``: the pass that finds it full sets ``hit_cap`` when the
    model still wanted to insert. The result's ``schedule`` holds, for each output
    position, the pass (0-based) that inserted it. Ties go to the lowest slot, then the
    lowest token id, so a sentence decodes the same alone or in a batch.
    """
    device = src.device
    batch = src.shape[0]
    encoded = model.encode(src)
    caps = length_caps((src != ids.pad).sum(1), max_len_a, max_len_b, max_len - 2).tolist()
    never = sorted({ids.pad, ids.bos, *banned} - {ids.eos})
    rows: list[list[int]] = [[] for _ in range(batch)]
    born: list[list[int]] = [[] for _ in range(batch)]
    closed: list[list[bool]] = [[False] for _ in range(batch)]
    done, hit_cap = [False] * batch, [False] * batch
    history: list[list[list[int]]] = []
    passes = 0
    while not all(done):
        active = [i for i in range(batch) if not done[i]]
        canvas = _pad_rows([[ids.bos, *rows[i], ids.eos] for i in active], ids.pad).to(device)
        enc = encoded if len(active) == batch else encoded.index_select(torch.tensor(active, device=device))
        logits = model.slot_logits(canvas, enc, canvas != ids.pad).float()
        logits[..., never] = float("-inf")
        if not parallel:
            slots = torch.arange(logits.shape[1], device=device)[None]
            n_slots = torch.tensor([len(rows[i]) + 1 for i in active], device=device)
            joint = logits.masked_fill((slots >= n_slots[:, None])[..., None], float("-inf"))
            choice = joint.flatten(1).argmax(dim=1).tolist()
        else:  # per slot: the best token under p(token | slot)
            best_logprob, best_token = (t.tolist() for t in torch.log_softmax(logits, -1).max(dim=-1))
        for a, i in enumerate(active):
            if not parallel:
                slot, token = divmod(choice[a], logits.shape[2])
                inserts = [] if token == ids.eos else [(slot, token)]
            else:
                n = len(rows[i]) + 1
                wanted = [(s, best_token[a][s]) for s in range(n) if not closed[i][s]]
                for s, token in wanted:
                    if token == ids.eos:
                        closed[i][s] = True
                inserts = [(s, t) for s, t in wanted if t != ids.eos]
            room = caps[i] - len(rows[i])
            if not inserts or room == 0:
                done[i] = True
                hit_cap[i] = bool(inserts)
                continue
            if len(inserts) > room:  # (parallel only) keep the most confident that fit
                by_confidence = sorted(inserts, key=lambda st: (-best_logprob[a][st[0]], st[0]))
                inserts = sorted(by_confidence[:room])
            for slot, token in reversed(inserts):  # right to left: earlier slots keep their index
                rows[i].insert(slot, token)
                born[i].insert(slot, passes)
                if parallel:
                    closed[i][slot : slot + 1] = [False, False]
        passes += 1
        history.append([list(r) for r in rows])

    return DecodeResult(
        tokens=_pad_rows(rows, ids.pad).to(device),
        passes=passes,
        hit_cap=torch.tensor(hit_cap, dtype=torch.bool, device=device),
        history=[_pad_rows(step, ids.pad).to(device) for step in history],
        schedule=_pad_rows(born, -1).to(device),
    )

