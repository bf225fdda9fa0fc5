"""The vector quantizer: nearest codes, straight-through gradients, EMA updates,
k-means initialisation, dead-code restart, decomposed codebooks, usage statistics."""

from __future__ import annotations

import math

import pytest
import torch

from nargen.latent import QuantizerConfig, VectorQuantizer, kmeans


def test_codes_are_the_nearest_by_brute_force_and_lookup_inverts_them():
    q = VectorQuantizer(8, QuantizerConfig(codebook_size=16, groups=2)).eval()
    x = torch.randn(5, 7, 8)
    out = q(x)
    assert out.codes.shape == (5, 7, 2)
    for g in range(2):
        part = x[..., g * 4:(g + 1) * 4].reshape(-1, 4)
        brute = torch.cdist(part, q.codebook[g]).argmin(1)
        assert torch.equal(out.codes[..., g].reshape(-1), brute)
    assert torch.allclose(out.vectors, q.lookup(out.codes))


def test_gradient_passes_straight_through_and_commitment_pulls_towards_the_code():
    q = VectorQuantizer(4, QuantizerConfig(codebook_size=8, commitment=0.5)).eval()
    x = torch.randn(3, 4, requires_grad=True)
    out = q(x)
    (out.vectors * torch.arange(4.0)).sum().backward()
    assert torch.allclose(x.grad, torch.arange(4.0).expand(3, 4))  # identity Jacobian
    x.grad = None
    q(x).commitment_loss.backward()
    expected = 0.5 * 2 * (x - q.lookup(q(x).codes)).detach() / x.numel()
    assert torch.allclose(x.grad, expected, atol=1e-6)


def test_a_codebook_vector_quantizes_to_its_own_index_and_known_subcodes_come_back():
    q = VectorQuantizer(6, QuantizerConfig(codebook_size=5, groups=3)).eval()
    codes = torch.tensor([[0, 4, 2], [3, 3, 1], [1, 0, 4]])
    built = torch.cat([q.codebook[g, codes[:, g]] for g in range(3)], dim=-1)  # from known sub-codes
    assert torch.equal(q(built).codes, codes)
    single = VectorQuantizer(4, QuantizerConfig(codebook_size=7)).eval()
    assert torch.equal(single(single.codebook[0]).codes[:, 0], torch.arange(7))


def test_kmeans_finds_well_separated_centres():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[10.0, 0], [0, 10.0], [-10.0, 0], [0, -10.0]])
    points = (centres[:, None] + 0.1 * torch.randn(4, 50, 2, generator=g)).reshape(-1, 2)
    found = kmeans(points, 4, iters=20, generator=torch.Generator().manual_seed(3))
    distance = torch.cdist(centres, found).min(1).values
    assert (distance < 0.5).all(), found


def test_first_training_batch_initialises_codebook_by_kmeans():
    q = VectorQuantizer(2, QuantizerConfig(codebook_size=2, kmeans_iters=10)).train()
    x = torch.cat([torch.full((20, 2), 5.0), torch.full((20, 2), -5.0)]) + 0.01 * torch.randn(40, 2)
    out = q(x)
    assert bool(q.initialised)
    assert sorted(q.codebook[0, :, 0].round().tolist()) == [-5.0, 5.0]
    assert out.perplexity.item() == pytest.approx(2.0, rel=1e-3) and out.live_share.item() == 1.0


def test_ema_update_moves_a_used_code_toward_the_mean_of_its_vectors():
    c = QuantizerConfig(codebook_size=2, decay=0.5, kmeans_iters=0, dead_threshold=0.0)
    q = VectorQuantizer(2, c).train()
    q.initialised.fill_(True)
    q.codebook[0] = torch.tensor([[0.0, 0.0], [50.0, 50.0]])
    q.ema_sum[0] = q.codebook[0].clone()
    x = torch.tensor([[3.0, 1.0], [5.0, 3.0]])  # both nearest to code 0; their mean is (4, 2)
    before = torch.dist(q.codebook[0, 0], x.mean(0))
    q(x)
    assert torch.dist(q.codebook[0, 0], x.mean(0)) < before


def test_ema_update_follows_its_formula():
    c = QuantizerConfig(codebook_size=2, decay=0.9, kmeans_iters=0, dead_threshold=0.0)
    q = VectorQuantizer(1, c).train()
    q.initialised.fill_(True)
    q.codebook[0] = torch.tensor([[0.0], [10.0]])
    q.ema_sum[0] = q.codebook[0].clone()
    q.ema_count.fill_(1.0)
    x = torch.tensor([[1.0], [2.0], [9.0]])
    q(x)
    counts = torch.tensor([0.9 + 0.1 * 2, 0.9 + 0.1 * 1])
    sums = torch.tensor([0.9 * 0 + 0.1 * 3, 0.9 * 10 + 0.1 * 9])
    total = counts.sum()
    smoothed = (counts + c.epsilon) / (total + 2 * c.epsilon) * total
    assert torch.allclose(q.ema_count[0], counts)
    assert torch.allclose(q.codebook[0, :, 0], sums / smoothed)


def test_a_dead_code_restarts_at_a_batch_vector():
    c = QuantizerConfig(codebook_size=3, decay=0.5, kmeans_iters=0, dead_threshold=0.3)
    q = VectorQuantizer(1, c).train()
    q.initialised.fill_(True)
    q.codebook[0] = torch.tensor([[0.0], [1.0], [100.0]])  # code 2 never wins
    q.ema_sum[0] = q.codebook[0].clone()
    q.ema_count.fill_(0.5)
    x = torch.tensor([[0.1], [0.9], [0.2]])
    q(x)  # count of code 2: 0.5 * 0.5 = 0.25 < 0.3
    assert any(math.isclose(q.codebook[0, 2, 0].item(), v, rel_tol=1e-6) for v in (0.1, 0.9, 0.2))
    assert q.ema_count[0, 2].item() == 1.0


def test_usage_is_perplexity_and_live_share():
    q = VectorQuantizer(2, QuantizerConfig(codebook_size=4))
    perplexity, live = q.usage(torch.tensor([[0], [1], [2], [3]]))
    assert perplexity.item() == pytest.approx(4.0) and live.item() == 1.0
    perplexity, live = q.usage(torch.tensor([[1], [1], [1], [1]]))
    assert perplexity.item() == pytest.approx(1.0) and live.item() == 0.25


def test_masked_positions_neither_initialise_nor_update_the_codebook():
    q = VectorQuantizer(2, QuantizerConfig(codebook_size=4, kmeans_iters=2, dead_threshold=0.0)).train()
    x = torch.randn(2, 5, 2)
    x[1, 2:] = 1000.0  # padding, far from every real vector
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    q(x, mask)  # k-means initialisation
    q(x, mask)  # an EMA update
    assert q.codebook.abs().max() < 100
