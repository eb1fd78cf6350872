"""Tests of bench.py's FLOP count (the numerator of MFU): a hand count, and torch's own FLOP counter on a real
tiny training step; and the shape of the decoding report. Speed itself is never asserted."""
from types import SimpleNamespace

import torch
from torch.utils.flop_counter import FlopCounterMode

import bench


def test_step_flops_hand_count():
    # D=4, I=8, 1 layer, 2 heads of 2, 1 kv head, V=10; LoRA r=2 on q/k/v/o; one record of T=3 tokens,
    # 2 supervised positions, 1 media item of 5 features, K=1.
    cfg = SimpleNamespace(hidden_size=4, intermediate_size=8, num_hidden_layers=1, num_attention_heads=2,
                          num_key_value_heads=1, vocab_size=10)
    frozen = 4 * (4 * 4 + 4 * 2 + 4 * 2 + 4 * 4 + 3 * 4 * 8)  # q, k, v, o, gate/up/down: 4 in out = 576 per token
    lora = 6 * 2 * ((4 + 4) + (4 + 2) + (4 + 2) + (4 + 4))  # 6 r (in + out) = 336 per token
    attention = 12 * 3 * 3 * 4  # 12 T^2 D = 432
    head, projector = 4 * 4 * 10 * 2, 4 * 5 * 1 * 4 * 1  # 4 D V n_sup = 320, 4 f K D M = 80
    assert frozen + lora == 912
    expected = 3 * (frozen + lora) + attention + head + projector
    assert expected == 3568
    assert bench.step_flops(cfg, 2, ("q_proj", "k_proj", "v_proj", "o_proj"), [3], 2, 1, 5, 1) == expected


def test_step_flops_match_torch_flop_counter_on_a_tiny_step():
    """FlopCounterMode counts the matmuls autograd really runs (so no dW of frozen weights). It does not see
    CPU scaled-dot-product attention, so the formula's attention term 12 T^2 D L per record is added."""
    from train import to_batch

    torch.manual_seed(0)
    model = bench.build_model("tiny", "cpu")
    batch = bench.make_examples(model, 2, 40)
    assert [len(e["input_ids"]) for e in batch] == [40, 40] and all(e["n_sup"] > 0 for e in batch)
    with FlopCounterMode(display=False) as counter:
        model(**to_batch(model, batch, "cpu")).loss.backward()
    c = model.llm.config
    attention = 2 * 12 * 40 * 40 * c.hidden_size * c.num_hidden_layers
    flops = bench.step_flops(c, model.cfg.lora_r, model.cfg.lora_targets, [40, 40], sum(e["n_sup"] for e in batch),
                             2, model.cfg.feat_dim, model.cfg.tokens_per_item)
    assert flops == counter.get_total_flops() + attention


def test_bench_generate_reports_batches_1_8_32():
    torch.manual_seed(0)
    model = bench.build_model("tiny", "cpu")
    g = bench.bench_generate(model, "cpu", new_tokens=3, repeats=1)
    assert [(r["batch"], r["merged"], r["kv_cache"]) for r in g["runs"]] == [
        (1, False, False), (1, False, True), (1, True, True), (8, True, True), (32, True, True)]
    for r in g["runs"]:  # stopping is off, so every answer has new_tokens tokens: tokens/s = 3 answers/s
        assert r["answers_per_s"] > 0 and abs(r["tok_per_s"] - 3 * r["answers_per_s"]) < 1e-6 * r["tok_per_s"]
    assert not model.llm.lm_head._forward_hooks  # the stop-banning hook is gone
    assert not any(getattr(m, "merged", False) for m in model.modules())  # and the LoRA unmerged again
