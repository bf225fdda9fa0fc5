"""The Insertion Transformer: slot targets, exact loss identities, and insertion decoding
driven by an oracle that knows the reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nargen.core import TransformerConfig
from nargen.decoding import SpecialIds, insertion_decode
from nargen.models import InsertionModule
from nargen.models.insertion import InsertionOptions, slot_targets
from nargen.orderings import balanced_tree

IDS = SpecialIds(pad=0, bos=1, eos=2)
A, B, C, D, E = 10, 11, 12, 13, 14


def targets_of(tokens, keep, **options):
    target = torch.tensor([tokens])
    return slot_targets(target, target != 0, torch.tensor([keep]), InsertionOptions(**options), IDS)


def test_canvas_holds_the_kept_tokens_between_bos_and_eos():
    t = targets_of([A, B, C, D, E], [False, True, False, True, False], order="uniform")
    assert t.canvas.tolist() == [[1, B, D, 2]]
    assert t.slot.tolist() == [[0, -1, 1, -1, 2]]  # a in slot 0, c in slot 1, e in slot 2
    assert t.weight[0, [0, 2, 4]].tolist() == [1.0, 1.0, 1.0]
    assert not t.end_slots.any() and t.slots.tolist() == [3.0]


def test_empty_slots_must_predict_end_of_slot():
    t = targets_of([A, B, C, 0], [True, False, True, False], order="balanced_tree")
    assert t.canvas.tolist() == [[1, A, C, 2]]
    assert t.end_slots.tolist() == [[True, False, True]]  # before a, after c: nothing missing
    assert t.slot.tolist() == [[-1, 1, -1, -1]]


def test_span_weights_follow_the_order():
    tokens, keep = [A, B, C, D, E], [False] * 5
    uniform = targets_of(tokens, keep, order="uniform").weight[0]
    assert torch.allclose(uniform, torch.full((5,), 0.2))
    for temperature in (0.5, 2.0):
        tree = targets_of(tokens, keep, order="balanced_tree", tree_temperature=temperature).weight[0]
        expected = torch.softmax(-torch.tensor([2.0, 1.0, 0.0, 1.0, 2.0]) / temperature, 0)
        assert torch.allclose(tree, expected)
    prefix = targets_of(tokens, [True, True, False, False, False], order="left_to_right")
    assert prefix.weight[0].tolist() == [0.0, 0.0, 1.0, 0.0, 0.0]
    assert prefix.slot[0].tolist() == [-1, -1, 2, -1, -1]
    # the slots inside the prefix carry no loss: one term, the next token in the last slot
    assert prefix.end_slots.tolist() == [[False, False, False]] and prefix.slots.tolist() == [1.0]
    done = targets_of(tokens, [True] * 5, order="left_to_right")  # complete: end in the last slot
    assert done.end_slots.tolist() == [[False] * 5 + [True]] and done.slots.tolist() == [1.0]


def module(tokenizer, order):
    torch.manual_seed(0)
    cfg = TransformerConfig.from_preset("micro", vocab_size=tokenizer.vocab_size)
    return InsertionModule(cfg, tokenizer, family_options={"order": order}).eval()


def batch_of(target_rows):
    target = torch.tensor(target_rows)
    tgt_in = torch.cat([torch.full((len(target_rows), 1), 1), target], dim=1)
    return {"src": torch.tensor([[7, 8, 9, 2], [9, 9, 2, 0]]), "tgt_in": tgt_in}


@pytest.mark.parametrize("order", ["left_to_right", "uniform"])
def test_loss_with_one_slot_is_the_cross_entropy_of_that_slot(tokenizer, order):
    """With an empty canvas there is one slot and the joint (slot, token) distribution
    is the slot's softmax: left-to-right's loss is the cross-entropy of the first
    token (the AR model's first step), uniform's the mean cross-entropy of all tokens."""
    m = module(tokenizer, order)
    batch = batch_of([[A, B, C], [D, E, 0]])
    real = batch["tgt_in"][:, 1:] != 0
    loss = m.loss(batch, keep=torch.zeros_like(real))
    encoded = m.encode(batch["src"])
    canvas = torch.tensor([[1, 2], [1, 2]])
    logits = m.slot_logits(canvas, encoded, canvas != 0)[:, 0].float()
    target = batch["tgt_in"][:, 1:]
    if order == "left_to_right":
        expected = F.cross_entropy(logits, target[:, 0])
    else:
        per_token = -torch.log_softmax(logits, -1).gather(1, target.clamp(min=0))
        expected = ((per_token * real).sum(1) / real.sum(1)).mean()
    torch.testing.assert_close(loss, expected)


def test_left_to_right_loss_on_a_prefix_is_one_next_token_term(tokenizer):
    """Stern et al.'s left-to-right loss, -log p(y_k+1, k): on a prefix of k tokens, minus
    the joint (slot, token) log-probability of the next token in the last slot; on a
    complete canvas, of end-of-slot there. Nothing else enters: interior slots carry no
    end-of-slot term, and no average over slots dilutes the next token."""
    m = module(tokenizer, "left_to_right")
    batch = batch_of([[A, B, C], [D, E, 0]])
    keep = torch.tensor([[True, False, False], [True, True, False]])
    loss = m.loss(batch, keep=keep)
    logits_a = m.slot_logits(torch.tensor([[1, A, 2]]), m.encode(batch["src"][:1]), torch.ones(1, 3, dtype=torch.bool))
    logits_b = m.slot_logits(torch.tensor([[1, D, E, 2]]), m.encode(batch["src"][1:]), torch.ones(1, 4, dtype=torch.bool))
    joint_a = torch.log_softmax(logits_a.float().flatten(), 0).view_as(logits_a)
    joint_b = torch.log_softmax(logits_b.float().flatten(), 0).view_as(logits_b)
    # row 1: the prefix "A"; slot 1 (after A) learns B. Row 2 is complete: slot 2 ends.
    expected = -(joint_a[0, 1, B] + joint_b[0, 2, 2]) / 2
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)


class OracleInserter:
    """An insertion model that knows the reference (its source row): in every slot it
    prefers the middle missing token of the slot's span (the balanced tree), or
    end-of-slot when nothing is missing, scored below any insertion."""

    def __init__(self, vocab: int = 40) -> None:
        self.vocab = vocab

    def encode(self, src):
        return OracleState(src)

    def slot_logits(self, canvas, encoded, canvas_mask):
        out = torch.zeros(canvas.shape[0], canvas.shape[1] - 1, self.vocab)
        for row, (tokens, mask) in enumerate(zip(canvas.tolist(), canvas_mask.tolist())):
            reference = [t for t in encoded.src[row].tolist() if t > 2]
            placed = [t for t, m in zip(tokens, mask) if m][1:-1]
            kept = [reference.index(t) for t in placed]  # tokens are distinct
            bounds = [-1, *kept, len(reference)]
            for slot, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
                missing = reference[lo + 1 : hi]
                if missing:
                    out[row, slot, missing[len(missing) // 2]] = 5.0
                else:  # any insertion anywhere beats ending a slot
                    out[row, slot, IDS.eos] = 1.0
        return out


class OracleState:
    def __init__(self, src):
        self.src = src

    def index_select(self, indices):
        return OracleState(self.src.index_select(0, indices))


def references():
    rows = [list(range(3, 3 + n)) for n in (1, 2, 3, 5, 8, 13)]
    src = torch.nn.utils.rnn.pad_sequence([torch.tensor(r + [2]) for r in rows], batch_first=True)
    return rows, src


def test_parallel_oracle_decoding_rebuilds_the_reference_along_the_balanced_tree():
    rows, src = references()
    result = insertion_decode(OracleInserter(), src, parallel=True, ids=IDS, max_len=64,
                              keep_history=True)
    assert result.as_lists(0) == rows
    assert len(result.history) == result.passes and torch.equal(result.history[-1], result.tokens)
    for i, reference in enumerate(rows):
        # the pass that inserted each position is the balanced tree's step for it
        assert result.schedule[i, : len(reference)].tolist() == balanced_tree(reference).tolist()
    longest = max(len(r) for r in rows)
    assert result.passes == math.ceil(math.log2(longest + 1)) + 1  # + the pass that ends every slot
    alone = [insertion_decode(OracleInserter(), src[i : i + 1], ids=IDS, max_len=64) for i in range(len(rows))]
    for i, reference in enumerate(rows):
        assert alone[i].as_lists(0) == [reference]
        assert alone[i].passes == math.ceil(math.log2(len(reference) + 1)) + 1


def test_sequential_oracle_decoding_rebuilds_the_reference_one_token_a_pass():
    rows, src = references()
    result = insertion_decode(OracleInserter(), src, parallel=False, ids=IDS, max_len=64)
    assert result.as_lists(0) == rows
    assert result.passes == max(len(r) for r in rows) + 1
    for i, reference in enumerate(rows):  # one insertion a pass: a permutation schedule
        assert sorted(result.schedule[i, : len(reference)].tolist()) == list(range(len(reference)))


class RightFirstInserter(OracleInserter):
    """Knows the reference, but fills the rightmost unfinished span first: every other
    unfinished slot says end-of-slot until its turn comes."""

    def slot_logits(self, canvas, encoded, canvas_mask):
        out = super().slot_logits(canvas, encoded, canvas_mask)
        for row in range(out.shape[0]):
            wants = (out[row].argmax(-1) != IDS.eos).nonzero().flatten().tolist()
            for slot in wants[:-1]:
                out[row, slot] = 0.0
                out[row, slot, IDS.eos] = 1.0
        return out


@pytest.mark.parametrize("parallel", [True, False])
def test_decoding_reopens_a_slot_that_ended_too_early(parallel):
    """Every slot is scored afresh at every pass (Stern et al.): a slot that said
    end-of-slot while the span beside it was unfinished takes its tokens later."""
    rows, src = references()
    result = insertion_decode(RightFirstInserter(), src, parallel=parallel, ids=IDS, max_len=64)
    assert result.as_lists(0) == rows
    if not parallel:
        assert result.passes == max(len(r) for r in rows) + 1


def test_closing_ended_slots_for_good_loses_what_they_would_have_taken():
    rows, src = references()
    closed = insertion_decode(RightFirstInserter(), src, parallel=True, close_ended_slots=True, ids=IDS,
                              max_len=64).as_lists(0)[-1]
    assert len(closed) < len(rows[-1]) and [t for t in rows[-1] if t in closed] == closed  # a subsequence
    # with an oracle that never ends a slot early, both ways agree
    reopen = insertion_decode(OracleInserter(), src, parallel=True, ids=IDS, max_len=64)
    close = insertion_decode(OracleInserter(), src, parallel=True, close_ended_slots=True, ids=IDS, max_len=64)
    assert reopen.as_lists(0) == close.as_lists(0) == rows and reopen.passes == close.passes


class AppendingInserter(OracleInserter):
    """Knows the reference; its last slot wants the next reference token (or ends), and
    every interior slot wants some token, as an untrained slot might."""

    def slot_logits(self, canvas, encoded, canvas_mask):
        out = torch.zeros(canvas.shape[0], canvas.shape[1] - 1, self.vocab)
        for row, (tokens, mask) in enumerate(zip(canvas.tolist(), canvas_mask.tolist())):
            reference = [t for t in encoded.src[row].tolist() if t > 2]
            placed = [t for t, m in zip(tokens, mask) if m][1:-1]
            out[row, : len(placed), 30] = 9.0  # interior slots: a token, more confident than the last
            nxt = reference[len(placed)] if len(placed) < len(reference) else IDS.eos
            out[row, len(placed), nxt] = 5.0
        return out


@pytest.mark.parametrize("parallel", [True, False])
def test_last_slot_only_appends_the_next_token_and_ignores_interior_slots(parallel):
    rows, src = references()
    result = insertion_decode(AppendingInserter(), src, parallel=parallel, last_slot_only=True, ids=IDS, max_len=64)
    assert result.as_lists(0) == rows
    assert result.passes == max(len(r) for r in rows) + 1
    for i, reference in enumerate(rows):  # left to right: position j inserted at pass j
        assert result.schedule[i, : len(reference)].tolist() == list(range(len(reference)))


def test_insertion_stops_at_the_length_cap_and_says_so():
    rows, src = references()
    result = insertion_decode(OracleInserter(), src, parallel=True, ids=IDS, max_len_a=0, max_len_b=4)
    for i, reference in enumerate(rows):
        out = result.as_lists(0)[i]
        assert len(out) == min(4, len(reference))
        assert [t for t in reference if t in out] == out  # a subsequence of the reference
        assert bool(result.hit_cap[i]) == (len(reference) > 4)



class EarlyEndingInserter(OracleInserter):
    """Knows the reference, but in every slot with tokens still missing it prefers
    ending the slot by 0.5 in log probability over inserting the right token."""

    def slot_logits(self, canvas, encoded, canvas_mask):
        out = super().slot_logits(canvas, encoded, canvas_mask)
        unfinished = out.amax(-1) == 5.0
        out[..., IDS.eos] = torch.where(unfinished, 5.5, out[..., IDS.eos])
        return out


@pytest.mark.parametrize("parallel", [True, False])
def test_end_of_slot_penalty_moves_the_decision_by_exactly_its_margin(parallel):
    rows, src = references()
    decode = lambda penalty: insertion_decode(EarlyEndingInserter(), src, parallel=parallel, ids=IDS,
                                              max_len=64, eos_penalty=penalty)
    for below_margin in (0.0, 0.4):  # ending still wins in every slot: nothing is inserted
        result = decode(below_margin)
        assert result.as_lists(0) == [[] for _ in rows] and result.passes == 1
    result = decode(0.6)  # inserting wins where tokens are missing; finished slots still end
    assert result.as_lists(0) == rows
    assert not result.hit_cap.any()
    reference = insertion_decode(OracleInserter(), src, parallel=parallel, ids=IDS, max_len=64)
    assert result.passes == reference.passes and torch.equal(result.schedule, reference.schedule)

@pytest.mark.slow
def test_insertion_model_learns_to_reverse_and_decodes_in_about_log_passes(trained_insertion, reversal_root):
    from nargen.data import read_split
    from nargen.models import load_module

    m = load_module(trained_insertion, family="insertion")
    test = read_split(reversal_root, "test", "src", "tgt")
    result = m.translate(test.source, parallel=True)
    exact = sum(o == r for o, r in zip(result.texts, test.target)) / len(test.target)
    assert exact >= 0.3
    # one batch of 100 sentences: parallel decoding needs fewer passes than inserting
    # one token a pass
    assert result.passes < m.translate(test.source, parallel=False).passes
