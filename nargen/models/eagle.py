"""Feature-level drafting (EAGLE, Li et al. 2024; its dynamic tree from EAGLE-2): one
small layer on a trained, frozen autoregressive model predicts the model's next top-layer
feature from its current one and the embedding of the token that feature chose; the
model's own output projection turns a predicted feature into draft scores, and the layer
runs again on its own prediction to draft further. Each decoding pass drafts a tree:
at every depth the ``tree_width`` most probable paths so far (the product of the
drafter's probabilities along them) each put forward their ``tree_width`` best next
tokens, and the ``tree_nodes`` most probable of all the drafted tokens are checked by the
model in one pass (``nargen.decoding.speculative``), whose greedy output comes out
unchanged.

Unlike EAGLE's layer, this one has no self-attention over earlier features: the
model's feature at the root already sums up the prefix, and drafting needs no cache of
its own; the layer attends to the source instead. It trains on the model's own greedy
translations, unrolled ``depth`` drafts deep (each draft from the layer's own previous
feature, as in decoding), on the cross-entropy of each drafted token plus the smooth L1
distance of each predicted feature to the model's. Drafts come from the ``draft_vocab``
target tokens seen most often in training (a smaller output projection per draft step,
as FR-Spec, Zhao et al. 2025); the model still checks them against its whole vocabulary. The layer is the draft heads'
(``nargen.models.frozen_target.DraftHead``), read out through its norm and fed back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from nargen.core import Encoded
from nargen.decoding.compiled import compiled_function
from nargen.decoding.speculative import DraftTree, ObservingDrafter
from nargen.models.autoregressive import AutoregressiveDecoding
from nargen.models.base import FamilyOptions
from nargen.models.frozen_target import DraftHead, FrozenTargetModule
from nargen.models.registry import register_family


@dataclass
class EagleOptions(FamilyOptions):
    depth: int = 4
    """Training: drafts unrolled from each position, each fed the layer's own feature."""
    feature_weight: float = 1.0
    """Training: weight of the features' smooth L1 distance beside the tokens' cross-entropy."""
    draft_vocab: int = 2048
    """Drafts come from this many of the target tokens seen most often in training (0: all)."""

    def __post_init__(self) -> None:
        if self.depth < 1:
            raise ValueError(f"depth must be >= 1, got {self.depth}")
        if self.draft_vocab < 0:
            raise ValueError(f"draft_vocab must be >= 0, got {self.draft_vocab}")


@dataclass
class EagleDecoding(AutoregressiveDecoding):
    """Greedy output in passes that each check a tree of drafts, at most ``block`` deep
    (0 decodes plain greedy)."""

    tree_width: int = 4
    """Paths kept at each depth of the tree, and tokens drafted after each (1: a chain)."""
    tree_nodes: int = 16
    """Drafted tokens checked per pass: the most probable of those drafted."""
    draft_confidence: float = 0.0
    """Drop every drafted token whose path (the drafter's probabilities multiplied along
    it) is less probable than this, and stop drafting deeper once no path is left (a read
    of the device a level; 0: every tree ``block`` deep, one read a tree)."""


@register_family
class EagleModule(FrozenTargetModule):
    """An autoregressive model (copied from ``trainer.init_from`` and frozen) with a
    feature-level drafter trained on its own greedy output (module doc); ``generate``
    gives its greedy output in passes that each check a tree of drafts."""

    family = "eagle"
    options_class = EagleOptions
    decoding_options = EagleDecoding

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.layer = DraftHead(self.model_config)
        # how often each token was a training target: the draft vocabulary is the most frequent
        self.register_buffer("target_counts", torch.zeros(self.model_config.vocab_size, dtype=torch.long))
        self._draft_vocab: tuple[torch.Tensor, torch.Tensor] | None = None

    def own_drafter(self, options: dict[str, Any]) -> "FeatureDrafter":
        """Trees ``tree_width`` wide of ``tree_nodes`` drafted tokens, pruned at
        ``draft_confidence``."""
        return FeatureDrafter(self, options["tree_width"], options["tree_nodes"], options["draft_confidence"],
                              options["compile"])

    def _step(self, feature: torch.Tensor, token: torch.Tensor, encoded: Encoded,
              kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """The predicted next feature from ``feature`` and the token ids ``token``."""
        model = self.model
        return self.layer.out_norm(self.layer(feature, model.embed(token) * model.embed_scale, encoded, kv))

    def _unrolled(self, batch: dict[str, torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The layer unrolled ``depth`` drafts from every position of the frozen model's
        teacher-forced pass: yields ``(predicted, feature, wanted)`` for draft ``i``: the
        layer's feature, the model's at the same position, and the token it should
        score highest (the target ``i`` tokens on from the model's own; pad past the end)."""
        model, target = self.model, batch["tgt_out"]
        with torch.no_grad():
            encoded = model.encode(batch["src"])
            features = model.decode_hidden(model.embed_tokens(batch["tgt_in"]), encoded)
        depth, length = self.options.depth, target.shape[1]
        padded = nn.functional.pad(target, (0, depth), value=self.ids.pad)
        later = nn.functional.pad(features, (0, 0, 0, depth))
        state = features
        for i in range(1, depth + 1):
            state = self._step(state, padded[:, i - 1 : i - 1 + length], encoded)
            yield state, later[:, i : i + length], padded[:, i : i + length]

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean over the unrolled drafts of the cross-entropy of the drafted token plus
        ``feature_weight`` times the smooth L1 distance to the model's feature, on real
        targets (drafts past every sentence's end left out)."""
        target = batch["tgt_out"]
        if self.training:
            self.target_counts.index_add_(0, target.flatten(), (target != self.ids.pad).flatten().long())
            self._draft_vocab = None
        losses = []
        for predicted, feature, wanted in self._unrolled(batch):
            real = wanted != self.ids.pad
            if bool(real.any()):
                tokens = self.model.output_loss(predicted[real], wanted[real], self.optim.label_smoothing)
                distance = nn.functional.smooth_l1_loss(predicted[real].float(), feature[real].float())
                losses.append(tokens + self.options.feature_weight * distance)
        return torch.stack(losses).mean()

    def teacher_forced_drafts(self, batch: dict[str, torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The unrolled drafts' scores over the draft vocabulary (as decoding drafts)."""
        ids, weight = self.draft_vocabulary()
        for predicted, _, wanted in self._unrolled(batch):
            full = torch.full((*predicted.shape[:2], self.model_config.vocab_size), float("-inf"),
                              device=predicted.device)
            yield full.index_copy_(-1, ids, (predicted @ weight.t()).float()), wanted

    def draft_vocabulary(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The ids a draft may propose (the ``draft_vocab`` most frequent targets, or all
        but PAD and BOS) and their rows of the output projection, kept until the counts
        change."""
        weight = self.model.embed.weight
        held = self._draft_vocab
        if held is None or held[1].device != weight.device or held[1].dtype != weight.dtype:
            counts = self.target_counts.clone()
            counts[self.never_drafted] = -1
            size = self.options.draft_vocab or self.model_config.vocab_size
            size = min(size, self.model_config.vocab_size - len(self.never_drafted))
            ids = counts.topk(size).indices.sort().values
            self._draft_vocab = (ids, weight.index_select(0, ids))
        return self._draft_vocab

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:
        """Loading new weights or counts forgets the draft vocabulary built from the old."""
        self._draft_vocab = None
        return super().load_state_dict(*args, **kwargs)

    @torch.no_grad()
    def prepare(self, encoded: Encoded) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer's cross-attention K/V of ``encoded`` (once per encoder state)."""
        return self.layer.cross.project_kv(encoded.memory)

    @torch.no_grad()
    def draft_tree(
        self, feature: torch.Tensor, tokens: torch.Tensor, encoded: Encoded, depth: int, width: int, nodes: int,
        prepared: tuple[torch.Tensor, torch.Tensor] | None = None, min_confidence: float = 0.0,
        compile: bool = False,
    ) -> tuple[list[DraftTree], int]:
        """A tree of drafts after each of ``tokens`` (``[rows]``, the model's choices at
        the features ``feature``, ``[rows, d_model]``), for the sources ``encoded``: at
        each of ``depth`` levels the ``width`` most probable paths each draft their
        ``width`` best next tokens; the ``nodes`` most probable drafted tokens are kept
        (a path's probability falls along it, so a kept token's parent is kept). EOS has
        no children. With ``min_confidence``, a token whose path is less probable is
        dropped, and drafting stops at the first level where every one is (a read of the
        device a level); else one read of the device, at the end. Also returns the levels
        drafted (the layer's sequential steps). ``compile``: without a confidence floor,
        a single row's levels run as one compiled function (``torch.compile``; a CUDA
        graph on a GPU), the same tree up to float rounding."""
        vocab, weight = self.draft_vocabulary()
        width = min(width, len(vocab))
        kv = prepared if prepared is not None else self.prepare(encoded)
        if compile and not min_confidence and len(tokens) == 1:
            grow = compiled_function(EagleModule._grow_tree, feature.device)
            if feature.is_cuda:
                torch.compiler.cudagraph_mark_step_begin()
        else:
            grow = EagleModule._grow_tree
        picked, levels = grow(self, feature, tokens, encoded, kv, vocab, weight, depth, width, nodes, min_confidence)
        trees = []
        for row_tokens, row_parents, row_ids, finite in picked.tolist():
            local: dict[int, int] = {}  # global id -> index in the tree
            tree = DraftTree([], [])
            for token_id, parent, node, ok in zip(row_tokens, row_parents, row_ids, finite):
                if ok and (parent < 0 or parent in local):
                    local[node] = len(tree.tokens)
                    tree.tokens.append(token_id)
                    tree.parents.append(-1 if parent < 0 else local[parent])
            trees.append(tree)
        return trees, levels

    def _grow_tree(
        self, feature: torch.Tensor, tokens: torch.Tensor, encoded: Encoded, kv: tuple[torch.Tensor, torch.Tensor],
        vocab: torch.Tensor, weight: torch.Tensor, depth: int, width: int, nodes: int, min_confidence: float,
    ) -> tuple[torch.Tensor, int]:
        """``draft_tree``'s levels: the kept nodes as ``[rows, 4, kept]`` (token, global
        parent id, global id, whether the path is above the floor), global ids in
        increasing order, and the levels drafted."""
        rows = len(tokens)
        state, token = feature[:, None], tokens[:, None]  # the frontier: [rows, paths, ...]
        score = torch.zeros(rows, 1, device=feature.device)
        parent_ids = torch.full((rows, 1), -1, device=feature.device, dtype=torch.long)
        drafted, parents, scores = [], [], []
        count = 0  # nodes drafted so far per row (their global ids)
        levels = 0
        for level in range(depth):
            state = self._step(state, token, encoded, kv)
            levels += 1
            logp = (state @ weight.t()).float().log_softmax(-1)  # [rows, paths, draft vocab]
            best, where = logp.topk(width, dim=-1)
            total = score[..., None] + best - 1e-4  # deeper nodes rank below their parents
            if level:
                total = total.masked_fill((token == self.ids.eos)[..., None], float("-inf"))
            if min_confidence > 0:
                total = total.masked_fill(total < math.log(min_confidence), float("-inf"))
                if not bool(total.isfinite().any()):  # nothing above the floor: no deeper level
                    break
            paths = total.shape[1]
            drafted.append(vocab[where].reshape(rows, -1))
            parents.append(parent_ids[..., None].expand(-1, -1, width).reshape(rows, -1))
            scores.append(total.reshape(rows, -1))
            ids = count + torch.arange(paths * width, device=feature.device)
            count += paths * width
            if level + 1 == depth:
                break
            score, pick = scores[-1].topk(min(width, paths * width), dim=-1)  # the next frontier
            parent_ids = ids[pick]
            token = drafted[-1].gather(1, pick)
            state = state.gather(1, (pick // width)[..., None].expand(-1, -1, state.shape[-1]))
        if not drafted:
            return torch.zeros(rows, 4, 0, dtype=torch.long, device=feature.device), levels
        all_tokens, all_parents, all_scores = (torch.cat(x, dim=1) for x in (drafted, parents, scores))
        kept = all_scores.topk(min(nodes, count), dim=-1).indices
        kept = kept.sort(dim=-1).values  # global ids: every parent before its children
        picked = torch.stack([all_tokens.gather(1, kept), all_parents.gather(1, kept), kept,
                              all_scores.gather(1, kept).isfinite().long()], dim=1)
        return picked, levels


class FeatureDrafter(ObservingDrafter):
    """Drafts trees with an ``EagleModule``'s layer from the verifier's own features
    (``HiddenStateDrafter``, ``TreeDrafter``); the first pass of a batch has no feature
    yet and drafts nothing. ``passes`` counts the layer's sequential steps. ``compile``:
    a single sentence's levels run compiled (``EagleModule.draft_tree``), always as deep
    as the deepest tree asked for so far (the verifier cuts what has no room)."""

    def __init__(self, module: EagleModule, width: int, nodes: int, min_confidence: float = 0.0,
                 compile: bool = False) -> None:
        if width < 1 or nodes < 1:
            raise ValueError(f"tree_width and tree_nodes must be >= 1, got {width} and {nodes}")
        if not 0 <= min_confidence < 1:
            raise ValueError(f"draft_confidence must be in [0, 1), got {min_confidence}")
        super().__init__(module)
        self.module, self.width, self.nodes, self.min_confidence = module, width, nodes, min_confidence
        self.compile, self.deepest = compile, 0

    def propose_tree(self, rows: list[int], prefixes: list[list[int]], k: int) -> list[DraftTree]:
        return self._draft(rows, k, self.width, self.nodes)

    def propose(self, rows: list[int], prefixes: list[list[int]], k: int) -> list[list[int]]:
        """The layer's greedy chain (for a verifier that checks chains)."""
        return [tree.tokens for tree in self._draft(rows, k, 1, k)]

    def _draft(self, rows: list[int], k: int, width: int, nodes: int) -> list[DraftTree]:
        seen = self.observed(rows)
        if seen is None:
            return [DraftTree([], []) for _ in rows]
        hidden, last, encoded, prepared = seen
        if self.compile:  # one depth for every call, so the compiled levels are traced once
            k = self.deepest = max(k, self.deepest)
        trees, levels = self.module.draft_tree(hidden, last, encoded, k, width, nodes, prepared, self.min_confidence,
                                               self.compile)
        self.passes += levels
        return trees
