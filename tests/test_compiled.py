"""Decoder steps over a cache of fixed shapes, eager and compiled, compute what the
growing cache computes: the same logits step by step (to float rounding), the same
greedy and beam outputs on a trained model, and no new compilation for a new length."""

from __future__ import annotations

import pytest
import torch

from nargen.core import Seq2SeqTransformer, TransformerConfig
from nargen.core.cache import StaticKVCache
from nargen.decoding import beam_search, greedy
from nargen.decoding.compiled import next_logits_pass
from nargen.models import load_module

EOS = 2


def stepwise_logits(model: Seq2SeqTransformer, src: torch.Tensor, tokens: torch.Tensor,
                    fixed_shapes: bool, compiled: bool) -> torch.Tensor:
    """Teacher-forced logits of ``tokens`` one cached step at a time: ``[batch, steps, vocab]``."""
    encoded = model.encode(src)
    cache = model.new_cache(encoded, tokens.shape[1] + 3, fixed_shapes=fixed_shapes)
    step = next_logits_pass(model, src.device, compiled)
    nothing = torch.zeros(0, dtype=torch.long)
    with torch.inference_mode():
        return torch.stack([step(tokens[:, i : i + 1], encoded, cache, nothing)
                            for i in range(tokens.shape[1])], dim=1)


def sources(batch: int, length: int, vocab: int) -> torch.Tensor:
    src = torch.randint(3, vocab, (batch, length))
    src[:, -1] = EOS
    if batch > 1:
        src[1, length // 2 :] = 0  # a padded row
        src[1, length // 2 - 1] = EOS
    return src


@pytest.mark.parametrize("settings", [
    {},  # rotary positions
    {"rotary_positions": False, "absolute_positions": True},
    {"n_kv_heads": 1, "share_decoder_kv": True},  # grouped K/V heads, K/V shared across layers
])
def test_fixed_shape_cache_gives_the_growing_caches_logits(settings):
    torch.manual_seed(0)
    model = Seq2SeqTransformer(TransformerConfig.from_preset("micro", vocab_size=40, **settings)).eval()
    src, tokens = sources(2, 7, 40), torch.randint(3, 40, (2, 9))
    growing = stepwise_logits(model, src, tokens, fixed_shapes=False, compiled=False)
    fixed = stepwise_logits(model, src, tokens, fixed_shapes=True, compiled=False)
    torch.testing.assert_close(fixed, growing, atol=1e-5, rtol=1e-5)


def test_fixed_shape_cache_keeps_its_buffers_and_position_on_the_device():
    model = Seq2SeqTransformer(TransformerConfig.from_preset("micro", vocab_size=40)).eval()
    encoded = model.encode(sources(2, 5, 40))
    cache = model.new_cache(encoded, 6, fixed_shapes=True)
    assert isinstance(cache, StaticKVCache)
    before = [k.data_ptr() for k in cache.keys]
    with torch.inference_mode():
        model.decode(torch.full((2, 1), 1), encoded, cache=cache)
        model.decode(torch.full((2, 1), 5), encoded, cache=cache)
    assert cache.position.tolist() == [2]
    assert [k.data_ptr() for k in cache.keys] == before  # written in place
    assert all(k.shape[2] == 6 for k in cache.keys)
    cache.truncate(1)
    assert cache.key_mask(1)[0, 0, 0].tolist() == [True, True, False, False, False, False]


def test_compiled_pass_gives_the_eager_logits():
    torch.manual_seed(0)
    model = Seq2SeqTransformer(TransformerConfig.from_preset("micro", vocab_size=40)).eval()
    src, tokens = sources(2, 7, 40), torch.randint(3, 40, (2, 9))
    eager = stepwise_logits(model, src, tokens, fixed_shapes=False, compiled=False)
    compiled = stepwise_logits(model, src, tokens, fixed_shapes=True, compiled=True)
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def trained_module(trained_run):
    return load_module(trained_run / "checkpoints" / "best.ckpt", map_location="cpu")


def test_compiled_decoding_equals_eager_on_a_trained_model(trained_module, reversal_root):
    lines = (reversal_root / "test.src").read_text(encoding="utf-8").splitlines()[:16]
    model, settings = trained_module.model, trained_module.decoder_settings()
    src = trained_module.encode_batch(lines)
    margins = []

    def argmax_with_margin(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        top = logits.float().topk(2, dim=-1).values
        margins.append((top[:, 0] - top[:, 1]).min())
        return logits.argmax(-1)

    eager = greedy(model, src, pick=argmax_with_margin, **settings)
    # the comparison hinges on no near tie: the trained model's choices are clear ones
    assert min(margins) > 1e-2
    compiled = greedy(model, src, compile=True, **settings)
    assert torch.equal(compiled.tokens, eager.tokens)
    assert compiled.passes == eager.passes
    assert torch.equal(compiled.hit_cap, eager.hit_cap)
    for rows in (slice(0, 1), slice(3, 4)):  # batch 1: compiled apart from larger batches
        assert torch.equal(greedy(model, src[rows], compile=True, **settings).tokens,
                           greedy(model, src[rows], **settings).tokens)

    eager_beam = beam_search(model, src, beam=4, **settings)
    # nor does the beam's choice: its best hypothesis is clearly ahead of the next
    assert all(hyps[0][1] - hyps[1][1] > 1e-3 for hyps in eager_beam.nbest)
    compiled_beam = beam_search(model, src, beam=4, compile=True, **settings)
    assert torch.equal(compiled_beam.tokens, eager_beam.tokens)
    torch.testing.assert_close(compiled_beam.scores, eager_beam.scores, atol=1e-4, rtol=1e-4)

    # through the module's options, as translate and the CLI pass them
    assert trained_module.translate(lines, compile=True).texts == trained_module.translate(lines).texts


def test_a_new_length_compiles_nothing_new(trained_module, reversal_root):
    """Once a batch shape has been seen at two lengths (the second makes the lengths
    dynamic), sentences of other lengths replay what was compiled."""
    lines = (reversal_root / "test.src").read_text(encoding="utf-8").splitlines()
    by_length = {}
    for line in lines:
        by_length.setdefault(len(trained_module.source_ids([line])[0]), line)
    first, second, *others = sorted(by_length)
    assert others, "the test split needs sentences of at least three lengths"
    for length in (first, second):
        trained_module.translate([by_length[length]], compile=True)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for length in others:
            trained_module.translate([by_length[length]], compile=True)


def test_compiled_loss_gives_the_eager_loss_and_gradients(trained_run, reversal_root):
    """``trainer.compile``: the family's loss compiled (forward and backward) computes
    the eager loss and gradients, and the state dict keeps its plain names."""
    ckpt = trained_run / "checkpoints" / "best.ckpt"
    eager, compiled = (load_module(ckpt, map_location="cpu").eval() for _ in range(2))
    compiled.compile_loss()
    lines = (reversal_root / "test.src").read_text(encoding="utf-8").splitlines()[:12]
    refs = (reversal_root / "test.tgt").read_text(encoding="utf-8").splitlines()[:12]
    targets = [torch.tensor(ids) for ids in eager.tokenizer.encode(refs)]
    bos, eos = torch.tensor([eager.ids.bos]), torch.tensor([eager.ids.eos])
    batch = {
        "src": eager.encode_batch(lines),
        "tgt_in": torch.nn.utils.rnn.pad_sequence([torch.cat([bos, t]) for t in targets], batch_first=True),
        "tgt_out": torch.nn.utils.rnn.pad_sequence([torch.cat([t, eos]) for t in targets], batch_first=True),
    }
    losses = []
    for module in (eager, compiled):
        loss = module.loss(batch)
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[1], losses[0], atol=1e-5, rtol=1e-5)
    for (name, a), (_, b) in zip(eager.named_parameters(), compiled.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-4, msg=name)
    assert list(compiled.state_dict()) == list(eager.state_dict())


def test_compiled_parallel_passes_give_the_eager_output(trained_cmlm, reversal_root):
    """Any family takes ``compile``: its encoder and decoder passes run compiled while
    ``translate`` decodes, and the output is the eager one (CMLM, one pass: each
    position's argmax, which a trained model leaves far from a tie)."""
    module = load_module(trained_cmlm, map_location="cpu")
    lines = (reversal_root / "test.src").read_text(encoding="utf-8").splitlines()[:16]
    eager = module.translate(lines, iterations=1)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    compiled = module.translate(lines, iterations=1, compile=True)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs  # it did compile
    assert compiled.texts == eager.texts
    assert not module.model.compiled_passes  # only while translate ran
