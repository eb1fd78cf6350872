"""lora.py: parity with a hand-written reference, invariants (zero-init no-op, merge == unmerged,
merge idempotent, unmerge restores W) on a tiny random Llama, freezing, state dict round trip, dtypes."""
import pytest
import torch
import torch.nn as nn
from transformers import LlamaConfig, LlamaForCausalLM

from lora import (LoRALinear, apply_lora, count_parameters, load_lora_state_dict, lora_state_dict, merge_lora,
                  unmerge_lora)

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
# Tolerances for merged vs unmerged logits (logits here are ~0.4, the LoRA update moves them by ~0.5):
# fp32 differs only by summation order; bf16/fp16 round the merged weight once to 8/11 mantissa bits.
MERGE_ATOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 3e-3}


def tiny_llama(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=64, vocab_size=100, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).to(dtype)


def randomise_lora_B(model, std=0.1, seed=1):
    """B starts at zero; give it values so that the LoRA update actually changes the output."""
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, LoRALinear):
            nn.init.normal_(m.lora_B, std=std)


def test_lora_linear_matches_manual_reference():
    torch.manual_seed(0)
    layer = LoRALinear(16, 8, r=4, alpha=8, dropout=0.3).eval()  # eval: dropout off
    nn.init.normal_(layer.lora_B)
    x = torch.randn(2, 5, 16)
    W, b, A, B = layer.weight, layer.bias, layer.lora_A, layer.lora_B
    ref = x @ W.T + b + (x @ A.T @ B.T) * (8 / 4)
    torch.testing.assert_close(layer(x), ref)
    assert layer.scaling == 2.0 and A.shape == (4, 16) and B.shape == (8, 4)


def test_init_and_dropout_only_on_lora_branch():
    torch.manual_seed(0)
    layer = LoRALinear(64, 32, r=8, alpha=16, dropout=0.9).train()
    assert torch.count_nonzero(layer.lora_B) == 0
    bound = 1 / 64 ** 0.5  # kaiming_uniform(a=sqrt(5)) on fan_in=64 is U(-1/sqrt(64), 1/sqrt(64))
    assert layer.lora_A.abs().max() <= bound and layer.lora_A.std() > bound / 3
    x = torch.randn(4, 64)
    # B = 0: with 90% dropout the output must still be exactly the base layer (no dropout on the base path).
    assert torch.equal(layer(x), nn.functional.linear(x, layer.weight, layer.bias))
    nn.init.normal_(layer.lora_B)
    assert not torch.allclose(layer(x), layer.eval()(x))  # ... but there is dropout on the LoRA path


def test_gradients_reach_only_lora_A_and_B():
    torch.manual_seed(0)
    layer = LoRALinear(16, 8, r=4, alpha=4)
    nn.init.normal_(layer.lora_B)  # with B = 0 the gradient w.r.t. A would be exactly zero
    layer(torch.randn(3, 16)).pow(2).sum().backward()
    assert layer.weight.grad is None and layer.bias.grad is None
    assert layer.lora_A.grad.abs().sum() > 0 and layer.lora_B.grad.abs().sum() > 0


def test_zero_init_lora_leaves_llama_logits_unchanged():
    model, ids = tiny_llama(), torch.randint(0, 100, (2, 10))
    before = model(ids).logits
    apply_lora(model, r=4, alpha=8, dropout=0.5)
    model.train()  # dropout active on the LoRA branch: still a no-op because B = 0
    assert torch.equal(model(ids).logits, before)


def test_apply_lora_replaces_targets_freezes_rest_and_keeps_keys():
    model = tiny_llama()
    keys_before = set(model.state_dict())
    names = apply_lora(model, r=4, alpha=8)
    assert names == [f"model.layers.{i}.self_attn.{t}" for i in range(2) for t in TARGETS]
    assert all(isinstance(model.get_submodule(n), LoRALinear) for n in names)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith((".lora_A", ".lora_B")) for n in trainable)
    new_keys = set(model.state_dict()) - keys_before
    assert keys_before <= set(model.state_dict()) and new_keys == set(lora_state_dict(model))
    # hidden 32, GQA: k/v project 32 -> 16 (2 kv heads x head_dim 8); r * (in + out) per layer
    per_layer = 4 * ((32 + 32) + (32 + 16) + (32 + 16) + (32 + 32))
    trainable_count, total = count_parameters(model)
    assert trainable_count == 2 * per_layer


def test_apply_lora_errors():
    with pytest.raises(ValueError, match="no nn.Linear matched targets \\['qkv'\\]"):
        apply_lora(tiny_llama(), targets=("qkv",))
    model = tiny_llama()
    apply_lora(model, targets=("q_proj",), r=2, alpha=2)
    with pytest.raises(ValueError, match="already has LoRA"):
        apply_lora(model, targets=("q_proj",))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_merged_forward_equals_unmerged(dtype):
    model, ids = tiny_llama(dtype), torch.randint(0, 100, (2, 10))
    with torch.no_grad():
        base = model(ids).logits
        apply_lora(model, r=4, alpha=8, dropout=0.1)
        randomise_lora_B(model)
        model.eval()
        unmerged = model(ids).logits
        merge_lora(model)
        merged = model(ids).logits
    atol = MERGE_ATOL[dtype]
    assert (unmerged - base).abs().max() > 10 * atol  # the update is large enough for the test to mean something
    torch.testing.assert_close(merged, unmerged, atol=atol, rtol=0)
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if "lora_" in n)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merge_idempotent_and_unmerge_restores_base(dtype):
    model = tiny_llama(dtype)
    apply_lora(model, r=4, alpha=8)
    randomise_lora_B(model)
    q = model.model.layers[0].self_attn.q_proj
    W0, delta = q.weight.detach().clone(), q.delta_weight()
    q.merge()
    once = q.weight.detach().clone()
    q.merge()
    assert torch.equal(q.weight, once) and q.merged
    torch.testing.assert_close(once.float(), W0.float() + delta, atol=0, rtol=torch.finfo(dtype).eps)
    q.unmerge()
    q.unmerge()
    assert not q.merged
    # Up to one rounding of the merged sum and one of the difference, in the base dtype.
    err = (q.weight.float() - W0.float()).abs()
    assert (err <= torch.finfo(dtype).eps * (W0.float().abs() + delta.abs())).all()
    model.eval()  # merge state is not tied to train()/eval()
    assert not q.merged


def test_lora_state_dict_round_trip():
    ids = torch.randint(0, 100, (2, 7))
    src = tiny_llama(seed=0)
    apply_lora(src, r=4, alpha=8)
    randomise_lora_B(src, seed=3)
    state = lora_state_dict(src)
    assert len(state) == 2 * 2 * 4 and all(k.endswith((".lora_A", ".lora_B")) for k in state)
    dst = tiny_llama(seed=0)  # same base weights, fresh LoRA
    apply_lora(dst, r=4, alpha=8)
    load_lora_state_dict(dst, state)
    for k, v in lora_state_dict(dst).items():
        assert torch.equal(v, state[k])
    src.eval(), dst.eval()  # LoRA dropout off
    with torch.no_grad():
        torch.testing.assert_close(dst(ids).logits, src(ids).logits, atol=1e-5, rtol=0)
    first_key = next(iter(state))
    with pytest.raises(ValueError, match=f"1 missing keys \\['{first_key}'\\], 1 unexpected keys \\['typo'\\]"):
        load_lora_state_dict(dst, {**{k: v for k, v in state.items() if k != first_key}, "typo": state[first_key]})
    merge_lora(dst)  # merged weights already hold A, B: loading new ones silently would be wrong
    with pytest.raises(ValueError, match="unmerge_lora"):
        load_lora_state_dict(dst, state)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_forward_backward_in_each_base_dtype_and_autocast(dtype):
    torch.manual_seed(0)
    layer = LoRALinear(16, 8, r=4, alpha=4, dtype=dtype)
    nn.init.normal_(layer.lora_B)
    assert layer.weight.dtype == dtype and layer.lora_A.dtype == torch.float32  # fp32 trainable weights
    y = layer(torch.randn(3, 16, dtype=dtype))
    assert y.dtype == dtype
    y.float().sum().backward()
    assert layer.lora_A.grad.dtype == torch.float32 and layer.lora_A.grad.abs().sum() > 0
    with torch.autocast("cpu", dtype=torch.bfloat16):  # fp32 activations, bf16 compute
        y = layer(torch.randn(3, 16, dtype=dtype))
    assert y.dtype == torch.bfloat16


def test_lora_linear_from_linear_shares_base_weight():
    base = nn.Linear(16, 8, bias=False).eval()
    layer = LoRALinear.from_linear(base, r=2, alpha=2, dropout=0.5)
    assert not layer.training  # an eval-mode model stays in eval mode (no LoRA dropout sneaks in)
    assert layer.weight is base.weight and layer.bias is None and not layer.weight.requires_grad
    assert layer.lora_A.device == base.weight.device and layer.lora_A.requires_grad
    with pytest.raises(ValueError, match="r=0"):
        LoRALinear(4, 4, r=0, alpha=1)
