"""Contract of project.py (the projection P of Eq. 1 and `splice`): what agent.py and train.py rely on.

Projector(in_dim, llm_dim, K, shared=...) maps (N, in_dim) features and N modality names to (N, K, llm_dim),
row i from feature i alone; init_to_scale(target_std, feats, modalities) sets the output scale and returns the
projector; its state dict (saved in adapter.safetensors) includes the feat_mean / feat_std / feat_count buffers
and restores the same map. splice(inputs_embeds, input_ids, placeholder_id, media) writes media rows into exactly
the placeholder positions, row-major, without touching its input, differentiably. Nothing else is assumed: an
MLP, or another K, passes.
"""
import pytest
import torch

from project import MODALITIES, Projector, splice

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

IN, D = 12, 16
MODS = ["image", "audio", "video", "image", "audio"]


def feats(n, seed=0):
    return torch.randn(n, IN, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("K", [1, 3])
@pytest.mark.parametrize("shared", [False, True])
def test_shapes_and_rows_follow_their_own_item(K, shared):
    torch.manual_seed(0)
    P = Projector(IN, D, K, shared=shared)
    x = feats(5)
    y = P(x, MODS)
    assert y.shape == (5, K, D) and y.dtype == torch.float32 and torch.isfinite(y).all()
    perm = [3, 0, 4, 1, 2]
    torch.testing.assert_close(P(x[perm], [MODS[i] for i in perm]), y[perm])  # row i depends on item i only
    torch.testing.assert_close(P(x[:1], MODS[:1]), y[:1])
    assert P(x[:0], []).shape == (0, K, D)  # a batch without media
    same = P(x[[0, 0]], ["image", "audio"])
    assert torch.equal(same[0], same[1]) == shared  # per-modality maps unless shared (the official code's one map)


def test_only_known_modalities_and_matching_counts():
    P = Projector(IN, D)
    assert set(MODALITIES) == {"image", "video", "audio"}
    with pytest.raises(ValueError):
        P(feats(2), ["image"])  # 2 rows, 1 name
    with pytest.raises(ValueError):
        P(feats(1), ["smell"])


def test_trainable_and_differentiable():
    P = Projector(IN, D, 2)
    P(feats(5), MODS).square().sum().backward()
    params = [p for p in P.parameters() if p.requires_grad]
    assert params and all(p.dtype == torch.float32 for p in params)
    assert all(p.grad is not None for p in params) and sum(p.grad.abs().sum() for p in params) > 0


@pytest.mark.parametrize("shared", [False, True])
def test_init_to_scale_sets_the_output_std_and_the_state_dict_restores_it(shared):
    x = feats(60, 1) * 5 + 3  # far from the target scale: init_to_scale must bring it there
    mods = [MODALITIES[i % 3] for i in range(60)]
    torch.manual_seed(0)
    P = Projector(IN, D, 2, shared=shared)
    assert P.init_to_scale(0.02, x, mods) is P
    y = P(x, mods)
    assert 0.01 < y.std().item() < 0.04
    sd = P.state_dict()
    assert {"feat_mean", "feat_std", "feat_count"} <= set(sd)
    torch.manual_seed(1)
    Q = Projector(IN, D, 2, shared=shared)
    assert (Q(x, mods) - y).abs().max() > 1e-3  # a fresh projector is another map ...
    Q.load_state_dict(sd)
    torch.testing.assert_close(Q(x, mods), y)  # ... until the saved state dict (buffers included) is loaded


def test_splice_replaces_exactly_the_placeholders_in_row_major_order():
    ph = 7
    ids = torch.tensor([[1, ph, 2, ph, 3], [ph, 4, 5, 6, 0]])  # (B, T) with 3 placeholders
    embeds = torch.randn(2, 5, D, requires_grad=True)
    media = torch.randn(3, D, requires_grad=True)
    before = embeds.detach().clone()
    out = splice(embeds, ids, ph, media)
    assert out.shape == (2, 5, D)
    torch.testing.assert_close(out[0, 1], media[0].detach(), rtol=0, atol=0)
    torch.testing.assert_close(out[0, 3], media[1].detach(), rtol=0, atol=0)
    torch.testing.assert_close(out[1, 0], media[2].detach(), rtol=0, atol=0)
    keep = ids != ph
    assert torch.equal(out[keep], before[keep]) and torch.equal(embeds.detach(), before)  # input left alone
    # differentiable w.r.t. both: media rows get their position's gradient, text positions theirs
    w = torch.randn(2, 5, D)
    (out * w).sum().backward()
    torch.testing.assert_close(media.grad, w[~keep])
    torch.testing.assert_close(embeds.grad, w * keep[..., None])


def test_splice_takes_k_tokens_per_item_keeps_the_dtype_and_checks_the_count():
    ph = 7
    ids = torch.tensor([[ph, ph, 1, ph, ph]])
    media = torch.randn(2, 2, D)  # (N, K, D): an item's K tokens are consecutive
    out = splice(torch.zeros(1, 5, D, dtype=torch.bfloat16), ids, ph, media)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out[0, [0, 1, 3, 4]], media.reshape(4, D).to(torch.bfloat16))
    with pytest.raises(ValueError):
        splice(torch.zeros(1, 5, D), ids, ph, torch.randn(3, D))  # 4 placeholders, 3 rows
