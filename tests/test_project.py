"""project.py: routing and shapes of the projector P, its initial scale, `splice` (placement, gradient, errors,
dtype), P + LoRA on a tiny Llama, and the trainable-parameter count of the paper configuration."""
import sys

import pytest
import torch
import torch.nn as nn
from transformers import LlamaConfig, LlamaForCausalLM

import lora
import project
from lora import LoRALinear, apply_lora, count_parameters
from project import MODALITIES, Projector, splice


def test_projector_routes_each_row_to_its_modality_layer():
    torch.manual_seed(0)
    P = Projector(in_dim=6, llm_dim=5, tokens_per_item=3)
    feats = torch.randn(5, 6)
    mods = ["audio", "image", "audio", "video", "image"]
    out = P(feats, mods)
    assert out.shape == (5, 3, 5)
    for i, m in enumerate(mods):
        torch.testing.assert_close(out[i], P.proj[m](feats[i]).view(3, 5))
    assert P(torch.randn(0, 6), []).shape == (0, 3, 5)
    S = Projector(6, 5, shared=True)
    torch.testing.assert_close(S(feats, mods), S.proj["shared"](feats).view(5, 1, 5))


def test_projector_errors():
    P = Projector(4, 8)
    with pytest.raises(ValueError, match="unknown modality \\['depth'\\]"):
        P(torch.randn(2, 4), ["image", "depth"])
    with pytest.raises(ValueError, match="2 feature rows but 1 modality"):
        P(torch.randn(2, 4), ["image"])


def test_shared_vs_per_modality_parameter_counts():
    in_dim, D, K = 12, 10, 2
    per_linear = in_dim * K * D + K * D
    assert sum(p.numel() for p in Projector(in_dim, D, K).parameters()) == len(MODALITIES) * per_linear
    assert sum(p.numel() for p in Projector(in_dim, D, K, shared=True).parameters()) == per_linear


def test_init_to_scale_matches_target_std():
    torch.manual_seed(0)
    target = 0.02  # a Llama's token-embedding std (Vicuna-7B's is about this size)
    unit = nn.functional.normalize(torch.randn(512, 64), dim=-1)  # ImageBind image/video embeddings: |x| = 1
    loud = 20 * nn.functional.normalize(torch.randn(512, 64), dim=-1)  # ImageBind audio: |x| = 20
    P = Projector(64, 256).init_to_scale(target)
    assert abs(P(unit, ["image"] * 512).std().item() / target - 1) < 0.1
    assert P(loud, ["audio"] * 512).std().item() > 10 * target  # unit-norm assumption is wrong for audio ...
    feats, mods = torch.cat([unit, loud]), ["image"] * 512 + ["audio"] * 512
    P.init_to_scale(target, feats, mods)  # ... so measure the input norm per modality
    for x, m in ((unit, "image"), (loud, "audio")):
        assert abs(P(x, [m] * 512).std().item() / target - 1) < 0.1
    assert all(torch.count_nonzero(layer.bias) == 0 for layer in P.proj.values())


def test_splice_places_media_at_placeholders_with_gradient():
    torch.manual_seed(0)
    B, T, D, ph = 2, 6, 4, 99
    ids = torch.tensor([[1, 99, 2, 3, 99, 4], [99, 5, 6, 7, 8, 9]])
    embeds = torch.randn(B, T, D, dtype=torch.bfloat16)
    media = torch.randn(3, D, requires_grad=True)  # fp32 projector output
    out = splice(embeds, ids, ph, media)
    assert out.dtype == torch.bfloat16 and out.shape == (B, T, D)
    for row, (b, t) in enumerate([(0, 1), (0, 4), (1, 0)]):  # row-major order of the placeholders
        assert torch.equal(out[b, t], media[row].detach().to(torch.bfloat16))
    keep = ids != ph
    assert torch.equal(out[keep], embeds[keep]) and (embeds[~keep] != out[~keep]).any()
    weights = torch.arange(1.0, 4.0)[:, None]
    (out[~keep].float() * weights).sum().backward()  # each media row gets its own position's gradient
    torch.testing.assert_close(media.grad, weights.expand(3, D))
    # (N, K, D) media: one item with K = 3 tokens fills the same 3 positions in order
    torch.testing.assert_close(splice(embeds, ids, ph, media.detach().view(1, 3, D)), out)


def test_splice_mismatch_names_both_counts():
    ids = torch.tensor([[5, 7, 7, 7, 1]])
    with pytest.raises(ValueError, match="3 placeholder tokens \\(id 7\\) in input_ids but 2 media embeddings"):
        splice(torch.zeros(1, 5, 4), ids, 7, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="width 3"):
        splice(torch.zeros(1, 5, 4), ids, 7, torch.zeros(3, 3))


def test_projector_and_lora_train_through_a_tiny_llama():
    torch.manual_seed(0)
    llm = LlamaForCausalLM(LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                       num_key_value_heads=2, intermediate_size=64, vocab_size=100))
    apply_lora(llm, r=4, alpha=8)
    P = Projector(16, 32).init_to_scale(llm.get_input_embeddings().weight.std().item())
    ids = torch.tensor([[1, 2, 99, 3, 4], [99, 5, 99, 6, 7]])
    media = P(torch.randn(3, 16), ["image", "audio", "video"])  # (3, 1, 32)
    embeds = splice(llm.get_input_embeddings()(ids), ids, 99, media)
    llm(inputs_embeds=embeds, labels=ids).loss.backward()
    has_grad = {n for n, p in llm.named_parameters() if p.grad is not None}
    assert has_grad == {n for n in dict(llm.named_parameters()) if n.endswith((".lora_A", ".lora_B"))}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in P.parameters())  # through splice
    assert all(m.lora_B.grad.abs().sum() > 0 for m in llm.modules() if isinstance(m, LoRALinear))


# The paper configuration: Vicuna-7B (hidden 4096, 32 layers, 32 heads, MLP 11008, vocab 32000), LoRA r=32 on
# q/k/v/o (official code), projectors 1024 (imagebind_huge) -> 4096, one token per item.
LORA_7B = 32 * 4 * 32 * (4096 + 4096)  # layers x targets x r * (in + out) = 33,554,432
P_LINEAR = 1024 * 4096 + 4096  # one projector linear layer = 4,198,400
VICUNA_7B_TOTAL = 2 * 32000 * 4096 + 32 * (4 * 4096**2 + 3 * 4096 * 11008 + 2 * 4096) + 4096  # 6,738,415,616


def test_paper_trainable_parameter_count():
    from lora import VICUNA_7B
    with torch.device("meta"):  # shapes only: nothing is allocated or downloaded
        llm = LlamaForCausalLM(LlamaConfig(**VICUNA_7B))
        assert count_parameters(llm) == (VICUNA_7B_TOTAL, VICUNA_7B_TOTAL)
        names = apply_lora(llm, r=32, alpha=32, dropout=0.1)
        P, P_shared = Projector(1024, 4096), Projector(1024, 4096, shared=True)
    assert len(names) == 128 and count_parameters(llm) == (LORA_7B, VICUNA_7B_TOTAL + LORA_7B)
    assert count_parameters(P)[0] == 3 * P_LINEAR and count_parameters(P_shared)[0] == P_LINEAR
    total, total_shared = LORA_7B + 3 * P_LINEAR, LORA_7B + P_LINEAR
    print(f"\npaper config trainable: LoRA {LORA_7B:,} + 3 projectors {3 * P_LINEAR:,} = {total:,} "
          f"(shared projector: {total_shared:,}); paper: about 40M")
    assert (total, total_shared) == (46_149_632, 37_752_832)


def test_count_clis_follow_their_flags(monkeypatch, capsys):
    """The count CLIs print, line for line, the sizes their flags ask for (test_paper_trainable_parameter_count
    checks the paper's sizes from the functions): P is in x K*D + K*D per linear, three or one (shared);
    LoRA adds layers x targets x r * (in + out) to Vicuna-7B's frozen total."""
    monkeypatch.setattr(sys, "argv", ["project.py", "--in-dim", "8", "--llm-dim", "4", "--tokens-per-item", "2"])
    project.main()
    assert capsys.readouterr().out.splitlines() == [  # 8 * 2*4 + 2*4 = 72 per linear
        "P, three linears, one per modality (paper): 216 parameters (8 -> 2 x 4)",
        "P, one shared linear (official code): 72 parameters (8 -> 2 x 4)"]
    monkeypatch.setattr(sys, "argv", ["lora.py", "--r", "8", "--targets", "q_proj", "v_proj"])
    lora.main()
    lora_8 = 32 * 2 * 8 * (4096 + 4096)
    assert capsys.readouterr().out.splitlines() == [
        f"Vicuna-7B shapes (hidden 4096, 32 layers): {VICUNA_7B_TOTAL:,} parameters",
        "LoRA r=8 on q_proj v_proj: r * (in + out) per layer",
        f"LoRA trainable: {lora_8:,} in 64 layers ({100 * lora_8 / (VICUNA_7B_TOTAL + lora_8):.3f}% of "
        f"{VICUNA_7B_TOTAL + lora_8:,})"]


def test_standardisation_from_training_features():
    """init_to_scale(feats) makes P see (x - mean) / std per modality: features that share a large common
    direction (an untrained ImageBind's) reach the linear layer centred, at unit variance per dimension."""
    torch.manual_seed(0)
    common = nn.functional.normalize(torch.randn(64), dim=0)
    video = nn.functional.normalize(common + 0.05 * torch.randn(256, 64), dim=-1)  # cos ~ 0.99 between items
    audio = 20 * nn.functional.normalize(torch.randn(256, 64), dim=-1)
    P = Projector(64, 32)
    x_id = P(video[:4], ["video"] * 4)  # before: identity standardisation
    torch.testing.assert_close(x_id, P.proj["video"](video[:4]).view(4, 1, 32))
    P.init_to_scale(0.02, torch.cat([video, audio]), ["video"] * 256 + ["audio"] * 256)
    k = P.modalities.index("video")
    torch.testing.assert_close(P.feat_mean[k], video.mean(0))
    torch.testing.assert_close(P.feat_std[k], video.std(0) + 1e-6)
    z = (video - P.feat_mean[k]) / P.feat_std[k]
    torch.testing.assert_close(P(video, ["video"] * 256), P.proj["video"](z).view(256, 1, 32))
    assert abs(P(video, ["video"] * 256).std().item() / 0.02 - 1) < 0.1  # at the LLM's scale after centring
    assert torch.equal(P.feat_mean[P.modalities.index("image")], torch.zeros(64))  # no image rows: untouched
    assert {"feat_mean", "feat_std", "feat_count"} <= set(P.state_dict())  # saved with the adapter
    with pytest.raises(ValueError, match=r"no \['image'\] input was in the training data"):
        P(video[:2], ["video", "image"])  # standardised for video and audio only: image has no statistics


def test_degenerate_statistics_are_handled():
    """One item, or identical items, have zero variance: P centres them, keeps a finite scale, and a new item
    of that modality still maps to a finite output at the LLM's scale (it used to divide by zero)."""
    torch.manual_seed(0)
    same = torch.randn(1, 64).repeat(4, 1)
    P = Projector(64, 32).init_to_scale(0.02, torch.cat([same, same[:1]]), ["image"] * 4 + ["audio"])
    for m in ("image", "audio"):
        k = P.modalities.index(m)
        assert torch.equal(P.feat_std[k], torch.ones(64)) and torch.equal(P.feat_mean[k], same[0])
    out = P(torch.randn(3, 64), ["image", "audio", "image"])
    assert torch.isfinite(out).all() and out.abs().max() > 0
    assert torch.equal(P(same[:2], ["image"] * 2), torch.zeros(2, 1, 32))  # the one seen item: centred to 0
    assert torch.isfinite(P.proj["image"].weight).all()
