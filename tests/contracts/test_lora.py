"""Contract of lora.py (the LoRA of LLM' in Eq. 1): what agent.py, train.py and evaluate.py rely on.

apply_lora(model, targets, r, alpha, dropout) adapts the nn.Linear layers named by `targets` in place: the base
model's state-dict keys and values stay (a checkpoint of the base still loads), a fresh adapter changes nothing,
only the lora_A / lora_B tensors train and they stay fp32 on a bf16 model; lora_state_dict / load_lora_state_dict
round trip them; merge_lora / unmerge_lora fold them in and out without changing the outputs.
"""
import copy

import pytest
import torch
import torch.nn as nn

from lora import apply_lora, load_lora_state_dict, lora_state_dict, merge_lora, unmerge_lora

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TARGETS = ("q_proj", "v_proj")


class Block(nn.Module):
    """Names as in a Llama layer: the targets inside submodules, one linear that is not a target."""

    def __init__(self, d=16):
        super().__init__()
        self.attn = nn.ModuleDict({"q_proj": nn.Linear(d, d), "v_proj": nn.Linear(d, d, bias=False)})
        self.mlp = nn.Linear(d, d)

    def forward(self, x):
        return self.mlp(torch.tanh(self.attn["q_proj"](x)) * self.attn["v_proj"](x))


def base(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(Block(), Block())


def adapted(seed=0, **kw):
    model = base(seed)
    apply_lora(model, TARGETS, **{"r": 4, "alpha": 8, "dropout": 0.0, **kw})
    return model


def randomize(model, seed=1):
    """A trained adapter (lora_B starts at zero, which would hide every mistake below)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for v in lora_state_dict(model).values():
            v.copy_(torch.randn(v.shape, generator=g) * 0.3)
    return model


X = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(9))


def test_keys_stay_and_a_fresh_adapter_is_a_no_op():
    ref = base()
    model = adapted(dropout=0.1)
    model.eval()
    ref_sd, sd = ref.state_dict(), model.state_dict()
    assert set(ref_sd) <= set(sd) and all(torch.equal(sd[k], v) for k, v in ref_sd.items())
    extra = set(sd) - set(ref_sd)
    assert extra == set(lora_state_dict(model)) and all(k.endswith((".lora_A", ".lora_B")) for k in extra)
    assert {k.rsplit(".", 1)[0] for k in extra} == {f"{i}.attn.{t}" for i in (0, 1) for t in TARGETS}
    torch.testing.assert_close(model(X), ref(X), rtol=0, atol=0)
    model.load_state_dict(ref_sd, strict=False)  # a base checkpoint loads into the adapted model


def test_only_lora_trains_and_stays_fp32_on_a_bf16_model():
    model = base().to(torch.bfloat16)
    apply_lora(model, TARGETS, r=4, alpha=8, dropout=0.0)
    randomize(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(lora_state_dict(model))
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if n in trainable)
    y = model(X.to(torch.bfloat16))
    assert y.dtype == torch.bfloat16
    y.float().square().sum().backward()
    assert all((p.grad is not None) == (n in trainable) for n, p in model.named_parameters())
    assert all(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n in trainable)


def test_the_adapter_changes_outputs_and_its_state_dict_round_trips():
    model = randomize(adapted())
    y = model(X)
    assert (y - base()(X)).abs().max() > 1e-3  # a trained adapter is not a no-op
    fresh = adapted()
    load_lora_state_dict(fresh, {k: v.clone() for k, v in lora_state_dict(model).items()})
    torch.testing.assert_close(fresh(X), y, rtol=0, atol=0)
    partial = dict(list(lora_state_dict(model).items())[1:])
    with pytest.raises((ValueError, KeyError, RuntimeError)):
        load_lora_state_dict(adapted(), partial)  # a missing tensor is an error, never silently left at init


def test_merge_and_unmerge_keep_the_outputs():
    model = randomize(adapted())
    y = model(X)
    merge_lora(model)
    torch.testing.assert_close(model(X), y, rtol=1e-5, atol=1e-5)
    merge_lora(model)  # idempotent: merging twice is merging once
    torch.testing.assert_close(model(X), y, rtol=1e-5, atol=1e-5)
    unmerge_lora(model)
    torch.testing.assert_close(model(X), y, rtol=1e-5, atol=1e-5)
    # after unmerge the base weights are the base's again (a saved base checkpoint stays valid)
    ref_sd = base().state_dict()
    assert all(torch.allclose(model.state_dict()[k], v, atol=1e-6) for k, v in ref_sd.items())


def test_dropout_only_in_train_mode():
    model = randomize(adapted(dropout=0.5))
    no_drop = copy.deepcopy(model)
    for m in no_drop.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    model.eval()
    torch.testing.assert_close(model(X), no_drop(X), rtol=0, atol=0)  # respond() decodes in eval mode
    model.train()
    assert (model(X) - no_drop(X)).abs().max() > 1e-4


def test_targets_that_match_nothing_are_an_error():
    with pytest.raises(ValueError):
        apply_lora(base(), ("gate_proj",), r=4, alpha=8, dropout=0.0)
