"""The step profile: operator time lands in the group of the module that ran it, forward
and backward, and the groups add up to the wall time."""

import time

import torch

from nargen.core import Seq2SeqTransformer, TransformerConfig
from nargen.bench.profiling import GROUPS, NARGEN_REGIONS, group_of, label_regions, summarize


def test_groups_of_operators_in_regions():
    assert group_of("attention", "aten::scaled_dot_product_attention") == GROUPS[0]
    assert group_of("attention", "aten::linear") == GROUPS[1]
    assert group_of("ffn", "aten::linear") == GROUPS[5]
    assert group_of("norm", "aten::mul") == GROUPS[4]
    assert group_of("model", "aten::matmul") == GROUPS[9]
    assert group_of(None, "aten::cross_entropy_loss") == GROUPS[10]
    assert group_of("optimizer", "aten::_fused_adamw_") == GROUPS[12]
    assert group_of("optimizer", "aten::_foreach_norm") == GROUPS[13]


def test_profile_of_a_training_step_attributes_forward_and_backward():
    model = Seq2SeqTransformer(TransformerConfig.from_preset("micro", dropout=0.1)).train()
    optimizer = torch.optim.AdamW(model.parameters(), fused=True)
    src, tgt = torch.randint(6, 64, (8, 12)), torch.randint(6, 64, (8, 10))
    remove = label_regions(model, NARGEN_REGIONS)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        started = time.perf_counter()
        for _ in range(2):
            logits = model(src, tgt)
            torch.nn.functional.cross_entropy(logits.flatten(0, 1), tgt.flatten()).backward()
            optimizer.step()
            optimizer.zero_grad()
        wall = time.perf_counter() - started
    remove()
    profile = summarize(prof.events(), 2, wall)
    for group in (GROUPS[0], GROUPS[1], GROUPS[4], GROUPS[5], GROUPS[9]):
        assert profile.forward.get(group, 0) > 0 and profile.backward.get(group, 0) > 0, group
    assert profile.forward.get(GROUPS[12], 0) > 0  # the optimizer step
    total = sum(r["total_ms"] for r in profile.rows())  # no operator time counted twice
    assert abs(total - profile.wall_ms) < 0.05 * profile.wall_ms + 0.1
    assert not any(h for m in model.modules() for h in m._forward_pre_hooks.values())


def test_the_fused_projection_and_loss_splits_into_output_projection_and_loss():
    model = Seq2SeqTransformer(TransformerConfig.from_preset("micro")).train()
    src, tgt = torch.randint(6, 64, (8, 12)), torch.randint(6, 64, (8, 10))
    remove = label_regions(model, NARGEN_REGIONS)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        started = time.perf_counter()
        hidden = model.decode_hidden(model.embed_tokens(tgt), model.encode(src))
        with torch.autograd.profiler.record_function("region:step"):
            loss = model.output_loss(hidden.flatten(0, 1), tgt.flatten(), 0.1)
        loss.backward()
        wall = time.perf_counter() - started
    remove()
    profile = summarize(prof.events(), 1, wall)
    assert profile.forward.get(GROUPS[9], 0) > 0  # the blocks' vocabulary products
    assert profile.forward.get(GROUPS[10], 0) > 0  # their log-softmax and gradient
    assert profile.forward.get(GROUPS[9], 0) > profile.forward.get(GROUPS[11], 0)
