"""Speculative decoding with exact greedy output: a cheap drafter proposes a block of up
to ``block`` tokens, the autoregressive model checks the whole block in one cached
pass, keeps the longest prefix it agrees with plus its own next token, and rolls its
KV cache back to what it accepted. A drafter may propose a tree of continuations
instead (``DraftTree``): the model checks every branch in the same one pass, each
drafted token seeing only its ancestors (``nargen.core.tree``), and keeps the longest
branch it agrees with, whose K/V the cache moves into place.

Batched with per-sentence acceptance: the cache keeps one length for the batch, the
shortest accepted one; a sentence that accepted more feeds its extra accepted tokens
again at the head of its next block (right-padded blocks, so causal attention keeps
real positions exact). The output equals ``greedy``'s token for token, up to the
float tolerance of batched scores (docs/decoding.md, "Batch invariance and ties").

Drafters: ``AutoregressiveDrafter`` (a small AR model, greedily), ``ParallelDrafter``
(NAT/CMLM, a pass per block), ``OnePassDrafter`` (any parallel model, once per batch,
realigned), and ``HeadsDrafter`` (draft heads reading the target's own hidden states:
blockwise parallel decoding); the feature-level tree drafter (``nargen.models.eagle``)
and the block drafter on the target's own encoder (``nargen.models.specdec``) live with
their families.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from nargen.core.tree import is_chain, node_depths, tree_layout
from nargen.decoding.compiled import SOURCE_BUCKET, bucketed_capacity, tree_pass
from nargen.decoding.protocol import (
    DecodeResult, Seq2SeqModel, SpecialIds, banned_ids, length_caps, pad_rows, steps_between_reads,
)


class Drafter(Protocol):
    """Proposes continuations: ``start(src)`` once per batch (passes it runs count), then
    ``propose(rows, prefixes, k)``: for each sentence ``rows[i]`` of that batch with
    output so far ``prefixes[i]`` (no BOS), up to ``k`` next tokens (EOS ends one).
    ``passes`` counts its sequential decoder passes."""

    passes: int

    def start(self, src: torch.Tensor) -> None: ...

    def propose(self, rows: list[int], prefixes: list[list[int]], k: int) -> list[list[int]]: ...


class HiddenStateDrafter(Drafter, Protocol):
    """A drafter that reads the target model's own state: after each verification pass,
    ``observe(rows, hidden, tokens, encoded)`` gets, for each sentence still decoding, the
    target's final hidden state ``[len(rows), d_model]`` at the position that chose the
    sentence's last output token, that token, and the target's encoder state of those
    rows. The target model must then offer ``embed_tokens``, ``decode_hidden`` and
    ``output_logits`` (as ``nargen.core.Seq2SeqTransformer`` does)."""

    def observe(self, rows: list[int], hidden: torch.Tensor, tokens: list[int], encoded: Any) -> None: ...


@dataclass
class DraftTree:
    """Candidate continuations of one sentence: ``tokens[m]`` follows node
    ``parents[m]`` (``-1``: the sentence's last token), every node listed after its
    parent. A chain (``parents == [-1, 0, 1, ...]``) is one path."""

    tokens: list[int]
    parents: list[int]

    @classmethod
    def chain(cls, tokens: list[int]) -> "DraftTree":
        return cls(list(tokens), list(range(-1, len(tokens) - 1)))

    def within(self, depth: int) -> "DraftTree":
        """The nodes at most ``depth`` deep (a chain: its first ``depth`` tokens)."""
        keep = [m for m, d in enumerate(node_depths(self.parents)) if d <= depth]
        where = {m: i for i, m in enumerate(keep)}
        return DraftTree([self.tokens[m] for m in keep], [where.get(self.parents[m], -1) for m in keep])


class EncoderSharingDrafter(Drafter, Protocol):
    """A drafter that reads the target model's encoder output instead of encoding the
    source itself: ``attach(encoded)`` hands it the batch's, once, before the first
    block (rows in batch order)."""

    def attach(self, encoded: Any) -> None: ...


class TreeDrafter(Drafter, Protocol):
    """A drafter that proposes trees: ``propose_tree(rows, prefixes, k)`` as ``propose``,
    a ``DraftTree`` per sentence, at most ``k`` deep."""

    def propose_tree(self, rows: list[int], prefixes: list[list[int]], k: int) -> list[DraftTree]: ...


@torch.inference_mode()
def speculative(
    model: Seq2SeqModel,
    src: torch.Tensor,
    drafter: Drafter,
    *,
    block: int = 4,
    draft_at_rows: int = 0,
    check_every: int | None = None,
    compile: bool = False,
    ids: SpecialIds = SpecialIds(),
    max_len_a: float = 1.5,
    max_len_b: int = 10,
    max_len: int = 256,
) -> DecodeResult:
    """Greedy decoding of ``model`` sped up by ``drafter``'s blocks (see module doc).
    With ``draft_at_rows``, a batch first decodes greedily, one token a sentence a pass,
    each finished sentence leaving the batch, until at most that many are still
    decoding; the drafter drafts for the rest (drafts cost a full batch more than they
    save; the last few sentences of a batch are where a pass is cheap to widen). 0:
    drafts from the first pass. ``check_every``: that greedy start's passes between
    reads of which sentences have ended (as ``greedy``'s: every pass on a CPU, every 8
    on an accelerator; it may run up to that many passes past the point where few are
    left).
    A drafter with ``propose_tree`` drafts trees up to ``block`` deep, checked in one
    pass (``nargen.core.tree``) where the model ``checks_trees``; the longest branch the
    model agrees with is kept.
    ``compile``: a single sentence's verification passes run compiled over a cache of
    fixed shapes (``nargen.decoding.compiled.tree_pass``: every pass a tree, as wide as
    its tail and nodes, padding no slot whose logits it would compute for nothing; a few
    traces, then replays, a CUDA graph per width on a GPU); the same output up to float
    rounding. (A drafter compiles its own steps where it was built
    to: the feature-level drafter with the decoder option ``compile``.) A batch of more
    sentences and a model that cannot check trees decode eagerly.
    ``passes`` counts both models' sequential passes; ``counts`` holds
    ``target_passes``, ``draft_passes``, the draft tokens ``proposed`` and
    ``accepted``, ``emitted``, the output tokens (EOS included) the passes chose,
    ``verified``, the sentences the passes checked (a pass over a batch checks each
    sentence still decoding: ``emitted / verified`` is the tokens a sentence gets per
    verification), ``compiled_passes``, the passes that ran compiled, and ``draft_ns``,
    the nanoseconds spent in the drafter's calls (each ends reading its drafts to the
    host, so on a GPU too the time is its own)."""
    if block < 1 or draft_at_rows < 0:
        raise ValueError(f"block must be >= 1 and draft_at_rows >= 0, got {block} and {draft_at_rows}")
    batch, device = src.shape[0], src.device
    check_every = steps_between_reads(check_every, device)
    encoded = model.encode(src)
    caps = length_caps((src != ids.pad).sum(1), max_len_a, max_len_b, max_len - 1).tolist()
    # BOS and up to ``cap`` tokens: drafts are cut to the room left below each cap, so no
    # pass reads a position greedy would not
    static = compile and batch == 1 and getattr(model, "checks_trees", False)
    if static:  # room for the widest pass after the longest output; few distinct shapes
        encoded = encoded.padded(SOURCE_BUCKET)
        capacity = bucketed_capacity(caps[0] + 1 + COMPILED_SLACK)
        cache = model.new_cache(encoded, capacity, fixed_shapes=True, overflow=max(capacity - max_len, 0))
        verify = tree_pass(model, device, compiled=True)
    else:
        cache = model.new_cache(encoded, max(caps, default=0) + 1)
    drafted_before = drafter.passes
    clock = time.perf_counter_ns()
    drafter.start(src)
    if hasattr(drafter, "attach"):  # it drafts from the model's own encoder output
        drafter.attach(encoded)
    stats = {"target_passes": 0, "draft_passes": 0, "proposed": 0, "accepted": 0, "emitted": 0,
             "verified": 0, "compiled_passes": 0, "draft_ns": time.perf_counter_ns() - clock}
    never = banned_ids((ids.pad, ids.bos), device)
    out: list[list[int]] = [[] for _ in range(batch)]
    hit_cap = [False] * batch
    active = list(range(batch))  # rows still decoding, in cache order
    cached = 0  # positions of every active row's input (BOS, out...) held in the cache
    reads_hidden = hasattr(drafter, "observe")
    # a tree drafter drafts chains for a model that cannot check trees (a windowed decoder)
    drafts_trees = hasattr(drafter, "propose_tree") and getattr(model, "checks_trees", False)
    if 0 < draft_at_rows < batch:
        active, cached, encoded, last = _greedy_until(model, encoded, cache, caps, out, hit_cap, stats, never,
                                                      ids, draft_at_rows, check_every)
        if reads_hidden and active:
            clock = time.perf_counter_ns()
            drafter.observe(active, last, [out[r][-1] for r in active], encoded)
            stats["draft_ns"] += time.perf_counter_ns() - clock
    while active:
        tails = [[ids.bos, *out[r]][cached:] for r in active]  # at least the last token
        room = [caps[r] - len(out[r]) for r in active]
        k = min(block, max(room))
        prefixes = [out[r] for r in active]
        clock = time.perf_counter_ns()
        if not k:
            trees = [DraftTree([], []) for _ in active]
        elif drafts_trees:
            trees = drafter.propose_tree(active, prefixes, k)
        else:
            trees = [DraftTree.chain(d) for d in drafter.propose(active, prefixes, k)]
        stats["draft_ns"] += time.perf_counter_ns() - clock
        trees = [t.within(min(block, left)) for t, left in zip(trees, room)]
        stats["proposed"] += sum(len(t.tokens) for t in trees)
        tree_pass_used = static or not all(is_chain(t.parents) for t in trees)
        if static:  # one sentence: its tail is its last token
            if cached + 1 + len(trees[0].tokens) > cache.capacity:
                raise ValueError(f"a compiled pass holds at most {COMPILED_SLACK - 1} drafted tokens, "
                                 f"got {len(trees[0].tokens)}")
            layout = tree_layout(0, tails, [trees[0].tokens], [trees[0].parents], ids.pad, device)
            chosen, hidden = verify(layout, encoded, cache, never)
            stats["compiled_passes"] += 1
        else:
            if tree_pass_used:
                layout = tree_layout(cached, tails, [t.tokens for t in trees], [t.parents for t in trees],
                                     ids.pad, device)
                x, offset = layout.tokens, layout.positions
            else:  # chains: contiguous positions, causal attention
                x = pad_rows([tail + t.tokens for tail, t in zip(tails, trees)], ids.pad, device)
                offset = cache.length
            if not tree_pass_used and not reads_hidden:
                logits = model.decode(x, encoded, causal=True, cache=cache).float()
            else:  # the hidden states or the tree's layout: a model like ``nargen.core.Seq2SeqTransformer``
                tree = {"tree": layout} if tree_pass_used else {}
                hidden = model.decode_hidden(model.embed_tokens(x, offset), encoded, causal=True, cache=cache, **tree)
                logits = model.output_logits(hidden).float()
            chosen = logits.index_fill_(-1, never, float("-inf")).argmax(-1)
        stats["target_passes"] += 1
        stats["verified"] += len(active)
        choice = chosen.tolist()
        keep_rows, valid, chosen_at, columns = [], [], [], []
        for i, r in enumerate(active):
            n_tail, tree = len(tails[i]), trees[i]
            children = {(p, token): m for m, (token, p) in enumerate(zip(tree.tokens, tree.parents))}
            node, at, path, done = -1, n_tail - 1, [], False  # ``at``: the column whose logits pick the next token
            while True:
                token = choice[i][at]
                if len(out[r]) >= caps[r]:  # greedy's rule: EOS at the cap
                    hit_cap[r] = token != ids.eos
                    token = ids.eos
                child = children.get((node, token))
                stats["emitted"] += 1
                if token == ids.eos:
                    stats["accepted"] += int(child is not None)
                    done = True
                    break
                out[r].append(token)
                if child is None:
                    break
                stats["accepted"] += 1
                node, at = child, n_tail + child
                path.append(child)
            # the pass's columns whose K/V the cache keeps: the tail and the accepted branch
            columns.append(list(range(n_tail)) + [n_tail + m for m in path])
            if not done:
                keep_rows.append(i)
                # K/V of BOS and out[r] minus its last token are exact in the cache
                valid.append(len(out[r]))
                chosen_at.append(at)
        if not keep_rows:
            break
        if tree_pass_used and any(c != list(range(len(c))) for c in columns):
            width = max(len(c) for c in columns)  # shorter rows repeat a column past what they keep
            cache.keep_columns(cached, pad_rows([c + c[-1:] * (width - len(c)) for c in columns], 0, device))
        if len(keep_rows) < len(active):
            cache.reorder(torch.tensor(keep_rows, device=device))
            encoded = encoded.index_select(torch.tensor(keep_rows, device=device))
            active = [active[i] for i in keep_rows]
        if reads_hidden:
            clock = time.perf_counter_ns()
            at = hidden[torch.tensor(keep_rows, device=device), torch.tensor(chosen_at, device=device)]
            drafter.observe(active, at, [out[r][-1] for r in active], encoded)
            stats["draft_ns"] += time.perf_counter_ns() - clock
        cached = min(valid)
        cache.truncate(cached)
    stats["draft_passes"] = drafter.passes - drafted_before
    return DecodeResult(
        tokens=pad_rows(out, ids.pad, device), passes=stats["target_passes"] + stats["draft_passes"],
        hit_cap=torch.tensor(hit_cap, dtype=torch.bool, device=device), counts=stats,
    )


COMPILED_SLACK = 64
"""Slots a compiled speculative pass may hold past a sentence's cap: its widest pass."""


def _greedy_until(
    model: Seq2SeqModel, encoded: Any, cache: Any, caps: list[int], out: list[list[int]], hit_cap: list[bool],
    stats: dict[str, int], never: torch.Tensor, ids: SpecialIds, rows_left: int, check_every: int,
) -> tuple[list[int], int, Any, torch.Tensor]:
    """Greedy passes, one token a sentence each, the finished sentences leaving the batch
    at each read (every ``check_every`` passes, as in ``greedy``), until a read finds at
    most ``rows_left`` still decoding: fills ``out``, ``hit_cap`` and ``stats`` and keeps
    the rest in the cache. Returns the rows still decoding, the positions the cache holds
    for each (BOS and all but its last token), their encoder state and the hidden state
    that chose each one's last token."""
    device = encoded.memory.device
    batch = len(out)
    limit = max(caps) + 1  # every sentence has ended by then (EOS at its cap)
    rows = torch.arange(batch, device=device)  # the rows in the cache, in cache order
    cap = torch.tensor(caps, device=device)
    chosen = torch.full((batch, limit), ids.pad, dtype=torch.long, device=device)
    capped = torch.zeros(batch, dtype=torch.bool, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)  # per row of ``rows``
    token = torch.full((batch,), ids.bos, dtype=torch.long, device=device)
    step = 0
    while True:
        hidden = model.decode_hidden(model.embed_tokens(token[:, None], step), encoded, causal=True, cache=cache)
        logits = model.output_logits(hidden[:, -1]).float()
        logits.index_fill_(-1, never, float("-inf"))
        token = logits.argmax(-1)
        at_cap = (step >= cap) & ~finished  # greedy's rule: EOS at the cap
        capped[rows] |= at_cap & (token != ids.eos)
        token = token.masked_fill(at_cap, ids.eos).masked_fill(finished, ids.pad)
        chosen[rows, step] = token
        step += 1
        finished |= token == ids.eos
        if step % check_every and step < limit:
            continue
        if int(finished.sum()):  # the loop's host read
            keep = finished.logical_not().nonzero().flatten()
            cache.reorder(keep)
            encoded = encoded.index_select(keep)
            rows, cap, token, hidden, finished = rows[keep], cap[keep], token[keep], hidden[keep], finished[keep]
        if len(rows) <= rows_left:
            break
    emitted = int((chosen != ids.pad).sum())
    stats["target_passes"] += step
    stats["emitted"] += emitted
    stats["verified"] += emitted
    for r, (row, hit) in enumerate(zip(chosen[:, :step].tolist(), capped.tolist())):
        out[r].extend(row[: row.index(ids.eos)] if ids.eos in row else row)
        hit_cap[r] = hit
    return rows.tolist(), step, encoded, hidden[:, -1]


class AutoregressiveDrafter:
    """A small autoregressive model drafting greedily with its own KV cache.

    The cache keeps one length for the batch, as the target's does: before each pass it
    is cut back to the longest prefix every sentence still shares with what it holds
    (after a rejected draft, the accepted output replaces the rest), and each sentence
    feeds its tokens from there, right-padded. At batch 1 every drafted token costs one
    single-position pass. The batch stops drafting where its longest sentence's next
    token would sit past the drafter's own ``max_len`` positions (BOS included), and the
    drafter reads at most that many source tokens."""

    def __init__(self, model: Seq2SeqModel, ids: SpecialIds = SpecialIds(), max_len: int = 256) -> None:
        self.model, self.ids, self.passes, self.max_len = model, ids, 0, max_len
        self.never = torch.empty(0, dtype=torch.long)  # PAD and BOS, on the batch's device
        self.encoded: Any = None
        self.cache: Any = None
        self.rows: list[int] = []  # batch rows in cache order
        self.held: list[list[int]] = []  # per cache row, the real tokens whose K/V it holds
        self.device = torch.device("cpu")

    def start(self, src: torch.Tensor) -> None:
        self.encoded, self.device = self.model.encode(fit_source(src, self.max_len, self.ids)), src.device
        self.never = banned_ids((self.ids.pad, self.ids.bos), src.device)
        self.cache = self.model.new_cache(self.encoded, 0)  # grows as drafts lengthen
        self.rows = list(range(src.shape[0]))
        self.held = [[] for _ in self.rows]

    def _keep(self, rows: list[int]) -> None:
        """Drop the sentences the target has finished from the cache."""
        if rows == self.rows:
            return
        where = {r: i for i, r in enumerate(self.rows)}
        order = [where[r] for r in rows]
        indices = torch.tensor(order, device=self.device)
        self.cache.reorder(indices)
        self.encoded = self.encoded.index_select(indices)
        self.rows, self.held = list(rows), [self.held[i] for i in order]

    def propose(self, rows: list[int], prefixes: list[list[int]], k: int) -> list[list[int]]:
        ids = self.ids
        self._keep(rows)
        seqs = [[ids.bos, *p] for p in prefixes]
        drafts: list[list[int]] = [[] for _ in rows]
        k = min(k, self.max_len - max(len(s) for s in seqs) + 1)  # the last input sits at max_len - 1
        for _ in range(max(k, 0)):
            shared = min(_common_prefix(h, s) for h, s in zip(self.held, seqs))
            shared = min(shared, min(len(s) for s in seqs) - 1)  # every row feeds its last token
            self.cache.truncate(shared)
            tails = [s[shared:] for s in seqs]
            x = pad_rows(tails, ids.pad, self.device)
            logits = self.model.decode(x, self.encoded, causal=True, cache=self.cache).float()
            self.passes += 1
            self.held = [list(s) for s in seqs]
            logits.index_fill_(-1, self.never, float("-inf"))
            last = torch.tensor([len(t) - 1 for t in tails], device=self.device)
            best = logits[torch.arange(len(rows), device=self.device), last].argmax(-1).tolist()
            for i, token in enumerate(best):
                if drafts[i] and drafts[i][-1] == ids.eos:
                    continue
                drafts[i].append(token)
                seqs[i].append(token)
            if all(d and d[-1] == ids.eos for d in drafts):
                break
        return drafts


def fit_source(src: torch.Tensor, max_len: int, ids: SpecialIds) -> torch.Tensor:
    """``src`` cut to a drafter's ``max_len`` tokens, a cut row ending in EOS as the
    target's own source rows do: a drafter may hold fewer positions than its target."""
    if src.shape[1] <= max_len:
        return src
    cut = src[:, :max_len].clone()
    cut[:, -1] = torch.where(cut[:, -1] == ids.pad, cut[:, -1], torch.full_like(cut[:, -1], ids.eos))
    return cut


def _common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of ``a`` and ``b``."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class ParallelDrafter:
    """A NAT or CMLM model drafting the rest of the sentence in one parallel pass: the
    prefix, then masks up to its predicted length; the first ``k`` predictions (EOS
    after the predicted length)."""

    def __init__(self, module: Any) -> None:
        self.module, self.passes = module, 0
        self.never = torch.empty(0, dtype=torch.long)  # ids it never drafts, on the batch's device
        self.encoded: Any = None
        self.lengths: list[int] = []
        self.device = torch.device("cpu")

    def start(self, src: torch.Tensor) -> None:
        m = self.module
        src = fit_source(src, m.model_config.max_len, m.ids)
        self.encoded, self.device = m.encode(src), src.device
        self.never = banned_ids({m.ids.pad, m.ids.bos, m.ids.eos, m.mask_id, *m.mask_predict_settings()["banned"]},
                                src.device)
        lengths, _ = m.predict_lengths(self.encoded, (src != m.ids.pad).sum(1), 1)
        self.lengths = lengths[:, 0].tolist()

    def propose(self, rows: list[int], prefixes: list[list[int]], k: int) -> list[list[int]]:
        m = self.module
        eos, mask_id = m.ids.eos, m.mask_id
        limit = m.model_config.max_len
        canvases = [(p + [mask_id] * max(self.lengths[r] - len(p), 0))[:limit] for r, p in zip(rows, prefixes)]
        x = pad_rows(canvases, m.ids.pad, self.device)
        real = x != m.ids.pad
        encoded = self.encoded.index_select(torch.tensor(rows, device=self.device))
        logits = m.decode_parallel(x, encoded, real).float()
        self.passes += 1
        logits.index_fill_(-1, self.never, float("-inf"))
        best = logits.argmax(-1).tolist()
        drafts = []
        for i, (p, c) in enumerate(zip(prefixes, canvases)):
            guess = best[i][len(p) : len(c)] + [eos] if len(p) < limit else []  # no room past its positions
            drafts.append(guess[:k])
        return drafts


def aligned_continuation(draft: list[int], prefix: list[int], k: int, eos: int, max_ngram: int = 3) -> list[int]:
    """Up to ``k`` tokens of ``draft`` that follow ``prefix``, then EOS if the draft ends.

    The draft is realigned to the prefix after every disagreement: the continuation
    starts after the longest suffix of ``prefix`` (up to ``max_ngram`` tokens) found in
    ``draft``, at the occurrence ending nearest position ``len(prefix)`` (the earlier one
    on a tie); with no match, at position ``len(prefix)``. A draft that is right is so
    continued exactly; after a wrong draft token the continuation skips it (the prefix
    substituted a token), after an extra one in the prefix it resumes where the prefix
    rejoins the draft (an insertion), after a skipped one past it (a deletion)."""
    here = len(prefix)
    start = here
    for n in range(min(max_ngram, here), 0, -1):
        tail = prefix[-n:]
        ends = [m for m in range(n, len(draft) + 1) if draft[m - n : m] == tail]
        if ends:
            start = min(ends, key=lambda m: (abs(m - here), m))
            break
    continuation = draft[start : start + k]
    if len(continuation) < k:
        continuation.append(eos)
    return continuation


class OnePassDrafter:
    """Any parallel model (CTC, DAG, NAT, CMLM, insertion, latent) drafting each
    sentence once, with its own decoder and settings, when a batch starts; every block
    is the draft's continuation of the output so far (``aligned_continuation``). The
    drafter decodes once per batch (one pass for CTC, DAG or NAT), where
    ``ParallelDrafter`` runs a pass per block."""

    def __init__(self, module: Any, **options: Any) -> None:
        self.module, self.options, self.passes = module, options, 0
        self.drafts: list[list[int]] = []

    def start(self, src: torch.Tensor) -> None:
        m = self.module
        result = m.generate(fit_source(src, m.model_config.max_len, m.ids), **self.options)
        self.passes += result.passes
        ids = self.module.ids
        rows = [row[: row.index(ids.eos)] if ids.eos in row else row for row in result.tokens.tolist()]
        self.drafts = [[t for t in row if t != ids.pad] for row in rows]

    def propose(self, rows: list[int], prefixes: list[list[int]], k: int) -> list[list[int]]:
        eos = self.module.ids.eos
        return [aligned_continuation(self.drafts[r], p, k, eos) for r, p in zip(rows, prefixes)]


class ObservingDrafter:
    """The bookkeeping of a drafter that reads the target model's own state
    (``HiddenStateDrafter``): what the last ``observe`` handed over, and what
    ``owner.prepare(encoded)`` makes of each encoder state (once per state). ``passes``
    stays 0 unless a subclass counts its own steps."""

    def __init__(self, owner: Any) -> None:
        self.owner, self.passes = owner, 0
        self.state: tuple[list[int], torch.Tensor, list[int], Any] | None = None
        self.prepared: tuple[Any, Any] = (None, None)  # (encoder state, owner.prepare of it)

    def start(self, src: torch.Tensor) -> None:
        self.state, self.prepared = None, (None, None)

    def observe(self, rows: list[int], hidden: torch.Tensor, tokens: list[int], encoded: Any) -> None:
        self.state = (rows, hidden, tokens, encoded)
        if self.prepared[0] is not encoded:
            self.prepared = (encoded, self.owner.prepare(encoded))

    def observed(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor, Any, Any] | None:
        """The last observation for ``rows`` (the rows the target reported): the hidden
        states, the last tokens as a device tensor, the encoder state and its prepared
        form; None before the first verification pass of a batch."""
        if self.state is None:
            return None
        observed, hidden, tokens, encoded = self.state
        if observed != rows:
            raise ValueError(f"drafting for rows {rows} but the target last reported rows {observed}")
        return hidden, torch.tensor(tokens, device=hidden.device), encoded, self.prepared[1]


class HeadsDrafter(ObservingDrafter):
    """Draft heads on the target model itself (blockwise parallel decoding, Stern et al.
    2018): after each verification pass, ``heads.draft(hidden, tokens, encoded, k,
    prepared, min_confidence)`` proposes the next block (a list of ids per sentence) from
    the target's hidden state at the position that chose each sentence's last token
    (``HiddenStateDrafter``), each draft ending at its first ``eos``;
    ``prepared = heads.prepare(encoded)`` is computed once for each encoder state (the
    heads' view of the source). It runs no decoder pass of its own (``passes`` stays 0:
    the heads are a few one-position layers); the first block is empty."""

    def __init__(self, heads: Any, eos: int, min_confidence: float = 0.0) -> None:
        super().__init__(heads)
        self.heads, self.eos, self.min_confidence = heads, eos, min_confidence

    def propose(self, rows: list[int], prefixes: list[list[int]], k: int) -> list[list[int]]:
        seen = self.observed(rows)
        if seen is None:
            return [[] for _ in rows]
        hidden, last, encoded, prepared = seen
        drafts = self.heads.draft(hidden, last, encoded, k, prepared, self.min_confidence)
        return [d[: d.index(self.eos) + 1] if self.eos in d else d for d in drafts]
