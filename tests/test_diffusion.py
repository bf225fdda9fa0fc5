"""Masked diffusion: the 1/t-weighted objective and the unmasking samplers."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from nargen.decoding import SpecialIds
from nargen.decoding.unmasking import SAMPLERS, unmask
from nargen.models.diffusion import block_causal_mask, draw_masks, mask_rates, weighted_masked_loss

IDS = SpecialIds(pad=0, bos=1, eos=2)
MASK = 4
VOCAB = 12


class Encoded:
    def __init__(self, src: torch.Tensor) -> None:
        self.src = src

    def index_select(self, rows: torch.Tensor) -> "Encoded":
        return Encoded(self.src.index_select(0, rows))


class ReferenceModel:
    """A parallel model that predicts the reference at every position (sure of it, or
    ``doubt`` from sure), its length the reference's; the reference of a source row is
    the row itself reversed (after its EOS, EOS padding)."""

    def __init__(self, doubt: float = 0.0, canvas: int = 0) -> None:
        self.doubt, self.canvas = doubt, canvas

    def reference(self, src: torch.Tensor) -> list[int]:
        return [t for t in src.tolist() if t not in (IDS.pad, IDS.eos)][::-1]

    def encode(self, src: torch.Tensor) -> Encoded:
        return Encoded(src)

    def predict_lengths(self, encoded: Encoded, src_lengths: torch.Tensor, k: int):
        lengths = torch.tensor([[len(self.reference(r)) + self.canvas] for r in encoded.src])
        return lengths, torch.zeros(lengths.shape)

    def decode_parallel(self, tokens, encoded, tgt_mask, positions=None):
        logits = torch.zeros(*tokens.shape, VOCAB)
        for i, row in enumerate(encoded.src):
            ref = self.reference(row) + [IDS.eos] * tokens.shape[1]
            for j in range(tokens.shape[1]):
                # confidence differs by position (and by sentence, whatever its row), so
                # the samplers' orders differ
                logits[i, j, ref[j]] = 8.0 - self.doubt * (1 + (7 * j + int(row[0])) % 5)
        return logits if positions is None else logits[positions]


def sources(rows: list[list[int]]) -> torch.Tensor:
    width = max(len(r) for r in rows) + 1
    return torch.tensor([r + [IDS.eos] + [IDS.pad] * (width - len(r) - 1) for r in rows])


SRC = sources([[5, 6, 7, 8, 9, 10], [11, 5], [7, 7, 9, 6, 5, 11, 10, 8, 6]])


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("steps", [1, 3, 10])
@pytest.mark.parametrize("doubt", [0.0, 1.5])
def test_a_model_that_predicts_the_reference_is_reproduced_by_every_sampler(sampler, steps, doubt):
    model = ReferenceModel(doubt)
    result = unmask(model, SRC, sampler=sampler, steps=steps, mask_id=MASK, ids=IDS, seed=3)
    assert result.as_lists(IDS.pad) == [model.reference(r) for r in SRC]
    assert result.passes <= steps


def test_the_threshold_sampler_commits_at_least_one_token_a_pass_and_ends():
    model = ReferenceModel(doubt=3.0)  # every prediction below the threshold
    result = unmask(model, SRC, sampler="threshold", threshold=0.999, steps=100, mask_id=MASK, ids=IDS)
    longest = max(len(model.reference(r)) for r in SRC)
    assert result.passes == longest  # one a pass, the longest sentence's length
    confident = unmask(ReferenceModel(), SRC, sampler="threshold", threshold=0.9, steps=100, mask_id=MASK, ids=IDS)
    assert confident.passes == 1


def test_the_threshold_sampler_with_an_even_floor_is_low_confidence_when_nothing_is_sure():
    doubtful = ReferenceModel(doubt=3.0)  # every prediction below the threshold
    even = unmask(doubtful, SRC, sampler="threshold", threshold=0.999, threshold_least="even", steps=4,
                  mask_id=MASK, ids=IDS)
    low = unmask(doubtful, SRC, sampler="low_confidence", steps=4, mask_id=MASK, ids=IDS)
    assert torch.equal(even.schedule, low.schedule) and even.passes == low.passes == 4
    sure = unmask(ReferenceModel(), SRC, sampler="threshold", threshold=0.9, threshold_least="even", steps=4,
                  mask_id=MASK, ids=IDS)
    assert sure.passes == 1 and sure.as_lists(IDS.pad) == [doubtful.reference(r) for r in SRC]
    with pytest.raises(ValueError, match="threshold_least"):
        unmask(doubtful, SRC, sampler="threshold", threshold_least="two", mask_id=MASK, ids=IDS)


@pytest.mark.parametrize("sampler", ["low_confidence", "margin", "threshold"])
def test_one_block_is_unblocked_decoding_and_blocks_commit_left_to_right(sampler):
    model = ReferenceModel(doubt=1.5)
    plain = unmask(model, SRC, sampler=sampler, steps=6, mask_id=MASK, ids=IDS)
    one_block = unmask(model, SRC, sampler=sampler, steps=6, block_length=64, mask_id=MASK, ids=IDS)
    assert torch.equal(plain.tokens, one_block.tokens) and torch.equal(plain.schedule, one_block.schedule)
    blocks = unmask(model, SRC, sampler="low_confidence", steps=9, block_length=3, mask_id=MASK, ids=IDS)
    for row in blocks.schedule.tolist():
        committed = [s for s in row if s >= 0]
        by_block = [committed[i : i + 3] for i in range(0, len(committed), 3)]
        assert all(max(a) < min(b) for a, b in zip(by_block, by_block[1:]))


def _order(schedule: torch.Tensor) -> list[int]:
    """A row's schedule as the rank of the pass that committed each position (passes
    numbered over a batch count other sentences' passes too)."""
    row = [s for s in schedule.tolist() if s >= 0]  # padding (-1) only after the output
    passes = sorted(set(row))
    return [passes.index(s) for s in row]


@pytest.mark.parametrize("sampler", ["low_confidence", "margin", "threshold"])
@pytest.mark.parametrize("block_length", [0, 2, 4])
def test_a_sentence_decodes_alone_as_in_a_batch_in_blocks_or_not(sampler, block_length):
    model = ReferenceModel(doubt=1.5)
    options = dict(sampler=sampler, steps=5, block_length=block_length, mask_id=MASK, ids=IDS)
    batch = unmask(model, SRC, **options)
    for i in range(len(SRC)):
        alone = unmask(model, SRC[i : i + 1], **options)
        assert alone.as_lists(IDS.pad)[0] == batch.as_lists(IDS.pad)[i]
        assert _order(alone.schedule[0]) == _order(batch.schedule[i]), i


def test_an_eos_padded_canvas_ends_the_output_at_its_first_eos():
    model = ReferenceModel(doubt=0.5, canvas=4)
    result = unmask(model, SRC, steps=4, eos_ends=True, mask_id=MASK, ids=IDS)
    assert result.as_lists(IDS.pad) == [model.reference(r) for r in SRC]
    assert not result.hit_cap.any()


@pytest.mark.parametrize("sampler", ["random", "ancestral"])
def test_seeded_sampling_repeats(sampler, trained_cmlm):
    from nargen.models import load_module

    module = load_module(trained_cmlm, map_location="cpu")
    src = module.encode_batch(["a b c d e f", "g h i", "a c e g i"])
    runs = [module.generate(src, sampler=sampler, iterations=4, temperature=1.0, seed=7).tokens for _ in range(2)]
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("sampler", ["low_confidence", "margin", "entropy", "threshold", "mask_predict"])
def test_a_trained_model_decodes_a_sentence_alone_as_in_a_batch(sampler, trained_cmlm, reversal_root):
    from nargen.models import load_module

    module = load_module(trained_cmlm, map_location="cpu")
    lines = (reversal_root / "test.src").read_text().splitlines()[:12]
    batched = module.translate(lines, sampler=sampler, iterations=4).texts
    alone = [module.translate([line], sampler=sampler, iterations=4).texts[0] for line in lines]
    assert batched == alone


def test_with_the_rate_fixed_the_objective_is_the_masked_cross_entropy_over_the_rate():
    g = torch.Generator().manual_seed(0)
    token_loss = torch.rand(3, 5, generator=g)
    real = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    rates = torch.tensor([0.2, 0.5, 0.9])
    masked = draw_masks(real, rates, g)
    assert not (masked & ~real).any()
    lengths = real.sum(1)
    got = weighted_masked_loss(token_loss, masked, rates, lengths)
    for i in range(3):
        expected = float(token_loss[i][masked[i]].sum()) / float(rates[i]) / int(lengths[i])
        assert math.isclose(float(got[i]), expected, rel_tol=1e-6)


@pytest.mark.parametrize("stratified", [False, True])
def test_the_monte_carlo_mean_of_the_objective_is_its_exact_expectation(stratified):
    """Length 3, a token loss that depends on the whole mask pattern: the mean over
    many draws of (rate, mask) equals the sum over all 8 patterns of their probability
    under U(low, 1) times their weighted loss, integrated exactly (with independent or
    stratified rates alike)."""
    low = 0.05

    def token_loss(pattern: torch.Tensor) -> torch.Tensor:  # [n, 3] bool -> [n, 3]
        n_masked = pattern.sum(1, keepdim=True).float()
        return 0.5 + n_masked * torch.tensor([0.3, 0.7, 1.1])

    def integral(a: int, b: int) -> float:
        """∫_low^1 t^(a-1) (1-t)^b dt / (1 - low), a >= 1 (expanding (1-t)^b)."""
        total = sum(math.comb(b, j) * (-1) ** j * (1 - low ** (a + j)) / (a + j) for j in range(b + 1))
        return total / (1 - low)

    exact = 0.0
    for bits in itertools.product([0, 1], repeat=3):
        pattern = torch.tensor([bits], dtype=torch.bool)
        m = sum(bits)
        if m == 0:
            continue
        loss = float((token_loss(pattern) * pattern).sum()) / 3
        exact += loss * integral(m, 3 - m)  # E[1{pattern} / t] = ∫ t^m (1-t)^(3-m) / t

    g = torch.Generator().manual_seed(1)
    n = 400_000
    real = torch.ones(n, 3, dtype=torch.bool)
    rates = mask_rates(n, low, "cpu", g, stratified=stratified)
    masked = draw_masks(real, rates, g)
    estimate = float(weighted_masked_loss(token_loss(masked), masked, rates, real.sum(1)).mean())
    assert abs(estimate - exact) < 0.02 * exact, (estimate, exact)


def test_stratified_rates_put_one_sentence_in_each_slice_and_each_sentence_any_rate():
    """A batch of n stratified rates has exactly one in each of n equal slices of
    [low, 1); over many batches every row's rate is uniform (mean ~ the midpoint, not
    tied to its row)."""
    low, n = 0.1, 16
    g = torch.Generator().manual_seed(3)
    batches = torch.stack([mask_rates(n, low, "cpu", g, stratified=True) for _ in range(4000)])
    slices = ((batches - low) / (1 - low) * n).floor().long()
    assert all(sorted(row.tolist()) == list(range(n)) for row in slices)
    means = batches.mean(0)
    assert ((means - (1 + low) / 2).abs() < 0.03).all(), means


def _exact_match(module, pair, **options) -> float:
    out = module.translate(pair.source, **options).texts
    return sum(o == r for o, r in zip(out, pair.target)) / len(pair.target)


def _logged(run_dir, name: str) -> list[float]:
    import csv

    values = []
    for path in run_dir.rglob("metrics.csv"):
        with open(path) as f:
            values += [float(row[name]) for row in csv.DictReader(f) if row.get(name)]
    return values


@pytest.mark.slow
@pytest.mark.parametrize("length, threshold, weighting", [("predictor", 0.7, "elbo"), ("canvas", 0.5, "elbo"),
                                                       ("predictor", 0.7, "flat")])
def test_diffusion_learns_to_reverse_and_validation_logs_its_likelihood_bound(
        length, threshold, weighting, reversal_root, tmp_path_factory):
    from conftest import train_parallel

    from nargen.data.corpora import read_split
    from nargen.models import load_module

    checkpoint = train_parallel(reversal_root, tmp_path_factory, "diffusion", "--optim.label_smoothing", "0.0",
                                "--family_options", f"{{length: {length}, weighting: {weighting}}}")
    module = load_module(checkpoint, family="diffusion")
    test = read_split(reversal_root, "test", "src", "tgt")
    assert _exact_match(module, test, iterations=4) >= threshold
    bounds = _logged(checkpoint.parent.parent, "val_nll_bound")
    # a bound on a likelihood: positive, and far below a uniform guess's on this learned task
    assert bounds and 0 < bounds[-1] < 0.1 * math.log(module.model_config.vocab_size)


def test_diagnose_sets_every_sampler_and_the_likelihood_bound_beside_the_teacher(
        reversal_root, tmp_path_factory, trained_run, tmp_path):
    from conftest import train_parallel

    from nargen.cli.main import main

    checkpoint = train_parallel(reversal_root, tmp_path_factory, "diffusion", "--optim.label_smoothing", "0.0",
                                steps=200)
    out = tmp_path / "diag"
    code = main(["diagnose", "--ckpt", str(checkpoint), "--src", str(reversal_root / "test.src"),
                 "--ref", str(reversal_root / "test.tgt"), "--out", str(out), "--limit", "20",
                 "--teacher_ckpt", str(trained_run / "checkpoints" / "best.ckpt"), "--iteration_counts", "1", "3"])
    assert code == 0
    import json

    report = json.loads((out / "diagnose.json").read_text())
    assert {(r["sampler"], r["iterations"]) for r in report["samplers"]} == {
        (s, t) for s in ("mask_predict", *SAMPLERS) for t in (1, 3)}
    assert all(r["mean_passes"] <= r["iterations"] for r in report["samplers"])
    bound, teacher = report["likelihood"]
    assert bound["tokens"] == teacher["tokens"]  # the same sentences, EOS counted alike
    assert bound["nll_per_token"] > 0 and teacher["nll_per_token"] > 0
    assert "## Unmasking samplers" in (out / "diagnose.md").read_text()


def _canvas(module, width: int = 9, seed: int = 0):
    """A source batch's encoding and a canvas of random tokens over three target lengths."""
    g = torch.Generator().manual_seed(seed)
    encoded = module.encode(module.encode_batch(["a b c d e f", "g h i", "a c e g i"]))
    real = torch.arange(width)[None] < torch.tensor([[width], [width - 3], [width - 1]])
    tokens = torch.randint(5, module.model_config.vocab_size, (3, width), generator=g)
    return encoded, tokens.masked_fill(~real, module.ids.pad), real


@torch.inference_mode()
def test_a_pass_over_a_span_with_the_canvas_cache_equals_the_whole_pass_there(trained_cmlm):
    from nargen.models import load_module

    module = load_module(trained_cmlm, map_location="cpu")
    encoded, tokens, real = _canvas(module)
    cache = module.new_canvas_cache()
    whole = module.decode_parallel(tokens, encoded, real, cache=cache)
    assert torch.allclose(whole, module.decode_parallel(tokens, encoded, real), atol=1e-5)
    for start, end in ((3, 7), (0, 2), (4, 9)):
        span = module.decode_parallel(tokens[:, start:end], encoded, real, cache=cache, offset=start)
        assert torch.allclose(span, whole[:, start:end], atol=1e-4)
    with pytest.raises(ValueError, match="whole-canvas pass"):
        module.decode_parallel(tokens[:, 3:7], encoded, real, cache=module.new_canvas_cache(), offset=3)


@torch.inference_mode()
def test_the_dual_cache_is_exact_for_one_decoder_layer_and_approximate_above(trained_cmlm):
    from dataclasses import replace

    from nargen.models import load_module

    module = load_module(trained_cmlm, map_location="cpu")
    layers, cfg = module.model.decoder_layers, module.model.cfg
    assert cfg.decoder_layers >= 2
    encoded, tokens, real = _canvas(module)
    changed = tokens.clone()
    changed[:, 3:7] = _canvas(module, seed=1)[1][:, 3:7]
    errors = {}
    for depth in (1, 2):
        module.model.decoder_layers = layers[:depth]
        module.model.cfg = replace(cfg, decoder_layers=depth)
        cache = module.new_canvas_cache()
        module.decode_parallel(tokens, encoded, real, cache=cache)
        span = module.decode_parallel(changed[:, 3:7], encoded, real, cache=cache, offset=3)
        errors[depth] = float((span - module.decode_parallel(changed, encoded, real)[:, 3:7]).abs().max())
    # one layer: K/V of a column depend on its own token only; two: on every column's
    assert errors[1] < 1e-4 and errors[2] > 1e-2, errors


@pytest.mark.parametrize("sampler", ["mask_predict", "low_confidence", "threshold"])
def test_reusing_cross_attention_between_passes_changes_no_output(sampler, trained_cmlm, reversal_root):
    from nargen.models import load_module

    module = load_module(trained_cmlm, map_location="cpu")
    lines = (reversal_root / "test.src").read_text().splitlines()[:12]
    cached = module.translate(lines, sampler=sampler, iterations=4, length_beam=2).texts
    module.new_canvas_cache = lambda: None
    assert module.translate(lines, sampler=sampler, iterations=4, length_beam=2).texts == cached


@pytest.mark.parametrize("block_cache", ["prefix", "dual"])
def test_blocks_reusing_their_kv_still_decode_a_trained_model(block_cache, trained_cmlm, reversal_root):
    from nargen.data.corpora import read_split
    from nargen.models import load_module

    module = load_module(trained_cmlm, map_location="cpu")
    test = read_split(reversal_root, "test", "src", "tgt")
    options = dict(sampler="low_confidence", iterations=8, block_length=3)
    exact = _exact_match(module, test, **options)
    reused = _exact_match(module, test, block_cache=block_cache, **options)
    assert exact >= 0.7 and reused >= exact - 0.1, (exact, reused)
    with pytest.raises(ValueError, match="block_cache"):
        module.translate(["a b"], sampler="mask_predict", block_cache=block_cache)


# ---- block diffusion: a block-causal decoder ---------------------------------------------
def _block_causal(tokenizer, absolute: bool = True, block: int = 3):
    from nargen.core import TransformerConfig
    from nargen.models.diffusion import DiffusionModule

    torch.manual_seed(0)
    cfg = TransformerConfig.from_preset("micro", vocab_size=tokenizer.vocab_size, absolute_positions=absolute)
    return DiffusionModule(cfg, tokenizer, family_options={"block_size": block}).eval()


def test_a_block_causal_column_sees_its_own_block_and_those_before():
    real = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    mask = block_causal_mask(real, 2, 4, 3)  # columns 2..5 of blocks of 3
    for i, q, k in itertools.product(range(2), range(4), range(7)):
        column = 2 + q
        assert bool(mask[i, q, k]) == (k == column or (bool(real[i, k]) and k // 3 <= column // 3)), (i, q, k)


@pytest.mark.parametrize("absolute", [True, False])
@torch.inference_mode()
def test_block_diffusion_trains_on_what_decoding_sees_and_no_block_sees_a_later_one(absolute, tokenizer):
    module = _block_causal(tokenizer, absolute)
    g = torch.Generator().manual_seed(3)
    encoded = module.encode(module.encode_batch(["a b c d e f", "g h i", "a c e g i"]))
    real = torch.arange(11)[None] < torch.tensor([[11], [7], [9]])
    target = torch.randint(5, module.model_config.vocab_size, (3, 11), generator=g).masked_fill(~real, module.ids.pad)
    masked = (torch.rand(3, 11, generator=g) < 0.5) & real
    trained = module.denoised_hidden(target, masked, encoded, real)  # one pass, every block
    inputs = target.masked_fill(masked, module.mask_id)
    for b in range(4):
        in_block = masked & (torch.arange(11) // 3 == b)[None]
        # blocks before b committed (the target), block b masked, later blocks anything
        junk = torch.randint(5, module.model_config.vocab_size, (3, 11), generator=g)
        canvas = torch.where(torch.arange(11)[None] < 3 * b, target, junk)
        canvas = torch.where((torch.arange(11) // 3 == b)[None], inputs, canvas).masked_fill(~real, module.ids.pad)
        decoded = module.parallel_hidden(canvas, encoded, real, positions=in_block)
        assert torch.allclose(decoded, trained[in_block[masked]], atol=1e-4), b


@torch.inference_mode()
def test_a_block_causal_decoder_reuses_committed_blocks_kv_exactly(tokenizer):
    module = _block_causal(tokenizer)
    encoded, tokens, real = _canvas(module, width=12)
    cache = module.new_canvas_cache()
    module.decode_parallel(tokens, encoded, real, cache=cache)  # the first pass: the whole canvas
    g = torch.Generator().manual_seed(5)
    for start, end in ((0, 3), (0, 6), (3, 6), (3, 9), (6, 9)):  # as unmask's passes go
        tokens = tokens.clone()
        fresh = torch.randint(5, module.model_config.vocab_size, tokens.shape, generator=g)
        changed = (torch.arange(12)[None] >= start) & real  # this span and what follows it
        tokens = torch.where(changed, fresh, tokens)
        span = module.decode_parallel(tokens[:, start:end], encoded, real, cache=cache, offset=start)
        whole = module.decode_parallel(tokens, encoded, real)
        assert torch.allclose(span, whole[:, start:end], atol=1e-4), (start, end)


@pytest.mark.slow
def test_block_diffusion_learns_to_reverse_and_decodes_alike_with_its_kv_reused(reversal_root, tmp_path_factory):
    from conftest import train_parallel

    from nargen.data.corpora import read_split
    from nargen.models import load_module

    checkpoint = train_parallel(reversal_root, tmp_path_factory, "diffusion", "--optim.label_smoothing", "0.0",
                                "--family_options", "{block_size: 3}")
    module = load_module(checkpoint, family="diffusion", map_location="cpu")
    test = read_split(reversal_root, "test", "src", "tgt")
    options = dict(iterations=8, length_beam=2)
    assert _exact_match(module, test, **options) >= 0.7
    assert (module.translate(test.source, block_cache="prefix", **options).texts
            == module.translate(test.source, **options).texts)
    with pytest.raises(ValueError, match="block-causal in blocks of 3"):
        module.translate(test.source[:2], block_length=4, **options)
    with pytest.raises(ValueError, match="unmasking sampler"):
        module.translate(test.source[:2], sampler="mask_predict", **options)
    bounds = _logged(checkpoint.parent.parent, "val_nll_bound")
    assert bounds and 0 < bounds[-1] < 0.1 * math.log(module.model_config.vocab_size)
