"""Feature-level drafting (EAGLE-style) on a frozen autoregressive model: training
leaves the model untouched, the layer learns to draft its next tokens as trees, and
decoding with them gives its greedy output token for token in fewer passes."""

from __future__ import annotations

import pytest
import torch

from nargen.data import read_split
from nargen.data.batching import pad_sequences
from nargen.decoding import greedy
from nargen.models import load_drafter, load_module, read_checkpoint
from nargen.training.fit import run_fit

from conftest import reversal_config

DEPTH = 4


@pytest.fixture(scope="module")
def eagle_run(trained_run, reversal_root, tmp_path_factory):
    """The feature layer on the reversal model, 400 updates (about 10 s)."""
    run_dir = tmp_path_factory.mktemp("eagle")
    config = reversal_config(
        reversal_root, run_dir, tmp_path_factory.mktemp("c"), 400, "--family", "eagle",
        "--family_options", f"{{depth: {DEPTH}}}", "--trainer.init_from",
        str(trained_run / "checkpoints" / "best.ckpt"), "--decode.validation", "{block: 0}",
    )
    return run_dir, run_fit(config)


@pytest.fixture(scope="module")
def sources(eagle_run, reversal_root):
    module = load_module(eagle_run[0] / "checkpoints" / "best.ckpt")
    test = read_split(reversal_root, "test", "src", "tgt")
    rows = [torch.tensor(x + [module.ids.eos]) for x in module.tokenizer.encode(test.source[:48])]
    return module, pad_sequences(rows, module.ids.pad).to(module.device)


@pytest.mark.slow
def test_training_moves_only_the_layer_and_counts_the_targets(eagle_run, trained_run):
    teacher = read_checkpoint(trained_run / "checkpoints" / "best.ckpt")["state_dict"]
    trained = read_checkpoint(eagle_run[0] / "checkpoints" / "last.ckpt")["state_dict"]
    core = [k for k in teacher if k.startswith("model.")]
    assert core and all(torch.equal(trained[k], teacher[k]) for k in core)
    assert any(k.startswith("layer.") for k in trained)
    counts = trained["target_counts"]
    assert counts.sum() > 0 and counts[0] == 0  # real targets counted, padding not
    assert eagle_run[1]["steps"] == 400


@pytest.mark.slow
def test_trees_are_accepted_deeper_than_chains(sources):
    module, src = sources
    reference = greedy(module.model, src, **module.decoder_settings())
    chain = module.generate(src, block=DEPTH, tree_width=1, tree_nodes=DEPTH)
    tree = module.generate(src, block=DEPTH, tree_width=3, tree_nodes=12)
    for out in (chain, tree):
        assert out.as_lists(module.ids.pad) == reference.as_lists(module.ids.pad)
        assert out.counts["target_passes"] < 0.5 * reference.passes
    # tokens chosen per verification pass: the tree's alternatives rescue wrong chains
    per_pass = [out.counts["emitted"] / out.counts["verified"] for out in (chain, tree)]
    assert per_pass[1] >= per_pass[0] > 2.0


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 3, 16])
@pytest.mark.parametrize("block,width,nodes", [(1, 1, 1), (2, 3, 5), (DEPTH, 1, DEPTH), (6, 4, 20)])
def test_output_equals_the_model_greedy_output(sources, batch, block, width, nodes):
    module, src = sources
    for start in range(0, 12 if batch < 16 else src.shape[0], batch):
        rows = src[start : start + batch]
        rows = rows[:, : int((rows != module.ids.pad).sum(1).max())]
        reference = greedy(module.model, rows, **module.decoder_settings())
        out = module.generate(rows, block=block, tree_width=width, tree_nodes=nodes)
        assert out.as_lists(module.ids.pad) == reference.as_lists(module.ids.pad)
        assert torch.equal(out.hit_cap, reference.hit_cap)


@pytest.mark.slow
def test_a_drafted_tree_keeps_its_most_probable_nodes_within_its_bounds(sources):
    module, src = sources
    model = module.model
    encoded = model.encode(src[:5])
    hidden = model.decode_hidden(model.embed_tokens(torch.full((5, 1), module.ids.bos)), encoded)[:, 0]
    first = model.output_logits(hidden).argmax(-1)
    for width, nodes, depth in ((1, 3, 3), (3, 10, 4), (4, 40, 3)):
        trees = module.draft_tree(hidden, first, encoded, depth, width, nodes)
        for tree in trees:
            assert 0 < len(tree.tokens) <= min(nodes, sum(width ** (d + 1) for d in range(depth)))
            depths = []
            for i, parent in enumerate(tree.parents):
                assert -1 <= parent < i
                depths.append(1 if parent < 0 else depths[parent] + 1)
                assert parent < 0 or tree.tokens[parent] != module.ids.eos  # EOS ends a branch
            assert max(depths) <= depth
            siblings = [(p, t) for p, t in zip(tree.parents, tree.tokens)]
            assert len(set(siblings)) == len(siblings)  # no token twice under one parent
            if width == 1:
                assert tree.parents == list(range(-1, len(tree.tokens) - 1))  # a chain


@pytest.mark.slow
def test_a_small_draft_vocabulary_drafts_only_the_most_frequent_targets(sources):
    module, src = sources
    module.options.draft_vocab = 6
    module.load_state_dict(module.state_dict())  # forgets the vocabulary built before
    try:
        ids, _ = module.draft_vocabulary()
        counts = module.target_counts.clone()
        counts[module.never_drafted] = -1
        assert set(ids.tolist()) == set(counts.topk(6).indices.tolist())
        out = module.generate(src[:8], block=3, tree_width=2, tree_nodes=6)
        assert out.as_lists(module.ids.pad) == greedy(module.model, src[:8], **module.decoder_settings()).as_lists(module.ids.pad)
    finally:
        module.options.draft_vocab = 2048
        module.load_state_dict(module.state_dict())


@pytest.mark.slow
def test_teacher_forced_acceptance_matches_what_chain_decoding_accepts(sources):
    """With the model's own greedy output as the target, ``accepted_lengths`` counts the
    drafted tokens a chain (``tree_width`` 1) would have accepted at each position."""
    module, src = sources
    ids = module.ids
    outputs = greedy(module.model, src, **module.decoder_settings()).as_lists(ids.pad)
    lengths = module.accepted_lengths(src, outputs)
    assert lengths.numel() == sum(len(o) for o in outputs)
    expected = accepted = 0
    for row, output in enumerate(outputs):
        one = module.generate(src[row : row + 1, : int((src[row] != ids.pad).sum())], block=DEPTH,
                              tree_width=1, tree_nodes=DEPTH)
        accepted += one.counts["accepted"]
        position = 0
        per_row = lengths[sum(len(o) for o in outputs[:row]) : sum(len(o) for o in outputs[: row + 1])]
        while position < len(output):
            take = int(per_row[position])
            expected += take
            position += take + 1
    assert accepted == expected


@pytest.mark.slow
def test_the_layer_drafts_for_the_plain_model_as_a_drafter_checkpoint(eagle_run, trained_run, sources):
    eagle, src = sources
    ar_path = trained_run / "checkpoints" / "best.ckpt"
    module = load_module(ar_path)
    drafter = load_drafter(str(eagle_run[0] / "checkpoints" / "best.ckpt"), module, str(ar_path))
    out = module.generate(src, draft=drafter, block=DEPTH)
    own = eagle.generate(src, block=DEPTH)
    assert out.as_lists(module.ids.pad) == greedy(module.model, src, **module.decoder_settings()).as_lists(module.ids.pad)
    tallies = [{k: v for k, v in c.items() if k != "draft_ns"} for c in (out.counts, own.counts)]
    assert tallies[0] == tallies[1]  # the same model underneath: the same trees
