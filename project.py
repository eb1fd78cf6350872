"""The trainable projection P of ModaVerse's Eq. (1), the input projection stage of the paper's Fig. 3 that
aligns the ImageBind embeddings I' to the LLM's token space O1, and `splice`, which puts them into the text.

    python project.py                     # parameter counts for the paper (1024 -> 4096, three vs one shared)
    python project.py --in-dim 512 --llm-dim 576
"""
import argparse

import torch
import torch.nn as nn

MODALITIES = ("image", "video", "audio")


class Projector(nn.Module):
    """P: one nn.Linear(in_dim, K * llm_dim) per modality (the paper's "three linear layers"), or ONE
    linear layer shared by all modalities when shared=True (what the official code does).

    K = tokens_per_item, default 1 as in the official code: ImageBind gives one pooled vector per media item,
    so K > 1 adds capacity (a wider map, K "soft tokens") but no information, and costs K positions per item.
    forward: feats (N, in_dim), modalities (N names) -> (N, K, llm_dim).
    """

    def __init__(self, in_dim, llm_dim, tokens_per_item=1, modalities=MODALITIES, shared=False):
        super().__init__()
        self.in_dim, self.llm_dim, self.tokens_per_item = in_dim, llm_dim, tokens_per_item
        self.modalities, self.shared = tuple(modalities), shared
        names = ["shared"] if shared else self.modalities
        self.proj = nn.ModuleDict({m: nn.Linear(in_dim, tokens_per_item * llm_dim) for m in names})
        # Fixed per-modality standardisation x -> (x - mean) / std, measured on training features by
        # init_to_scale (identity until then). P stays one affine map per modality; this only conditions the
        # optimisation: ImageBind features share a large common direction (an untrained encoder's toy videos:
        # 99.7% of |x|^2, images 93%), and on raw x Adam spends its steps on that direction, not on what differs.
        self.register_buffer("feat_mean", torch.zeros(len(self.modalities), in_dim))
        self.register_buffer("feat_std", torch.ones(len(self.modalities), in_dim))
        self.register_buffer("feat_count", torch.zeros(len(self.modalities)))  # items behind each modality's stats

    def forward(self, feats: torch.Tensor, modalities: list[str]) -> torch.Tensor:
        N, K, D = feats.shape[0], self.tokens_per_item, self.llm_dim
        if len(modalities) != N:
            raise ValueError(f"Projector got {N} feature rows but {len(modalities)} modality names")
        unknown = sorted(set(modalities) - set(self.modalities))
        if unknown:
            raise ValueError(f"Projector: unknown modality {unknown}; this projector knows {list(self.modalities)}")
        idx = torch.tensor([self.modalities.index(m) for m in modalities], device=feats.device, dtype=torch.long)
        if self.feat_count.any() and not self.feat_count[idx].all():  # standardised, but not for this modality
            unseen = sorted({m for m in modalities if not self.feat_count[self.modalities.index(m)]})
            raise ValueError(f"Projector: no {unseen} input was in the training data, so P has no statistics "
                             f"for it (trained on {[m for m, n in zip(self.modalities, self.feat_count) if n]})")
        feats = (feats - self.feat_mean[idx]) / self.feat_std[idx]  # (N, in_dim), standardised per modality
        if self.shared:
            return self.proj["shared"](feats).view(N, K, D)
        chunks, order = [], []  # run each modality's layer on its rows, then put rows back in input order
        for m in self.modalities:
            rows = [i for i, name in enumerate(modalities) if name == m]
            if rows:
                chunks.append(self.proj[m](feats[rows]))  # (n_m, K * D)
                order += rows
        if not chunks:
            return feats.new_zeros(0, K, D)
        inverse = torch.argsort(torch.tensor(order, device=feats.device))
        return torch.cat(chunks)[inverse].view(N, K, D)

    @torch.no_grad()
    def init_to_scale(self, target_std: float, feats: torch.Tensor | None = None, modalities=None):
        """Re-initialise so each output coordinate has std ~= target_std (the LLM's token-embedding std,
        e.g. `llm.get_input_embeddings().weight.std()`): W ~ N(0, (target_std / rms|x|)^2), b = 0.

        Why it matters: the frozen LLM has only seen inputs at its embedding scale. A pre-norm transformer
        normalises each layer's input but not the residual stream, so a media token 20x larger than a word is
        barely changed by the layers' updates and one 20x smaller is overwritten by the first; either way the
        first training steps go into fixing the scale instead of the content. ImageBind's embeddings are
        L2-normalised (rms|x| = 1, the default) except audio, scaled to norm 20. Pass sample training `feats`
        (N, in_dim) and their `modalities` (train.py does): they set the per-modality standardisation (see
        __init__), and rms|x| is then measured on the standardised features, per modality.
        """
        if feats is not None and modalities is None:
            raise ValueError("init_to_scale: pass `modalities` (one name per row of feats) with `feats`")
        if feats is not None:  # the standardisation statistics, per modality
            for k, m in enumerate(self.modalities):
                rows = feats[[i for i, name in enumerate(modalities) if name == m]].float()
                if len(rows):  # a coordinate that never varies (one item, identical items) is only centred
                    std = rows.std(0) if len(rows) > 1 else torch.zeros_like(rows[0])
                    self.feat_mean[k], self.feat_std[k] = rows.mean(0), torch.where(std > 1e-6, std, 1.0)
                    self.feat_count[k] = len(rows)
            idx = [self.modalities.index(m) for m in modalities]
            feats = (feats - self.feat_mean[idx]) / self.feat_std[idx]  # what the linear layers will see
        for name, layer in self.proj.items():
            norm = 1.0
            if feats is not None:
                rows = feats if self.shared else feats[[i for i, m in enumerate(modalities) if m == name]]
                if len(rows):  # rms of |x| over items; 0 when every item is the same (then keep 1)
                    norm = rows.float().pow(2).sum(-1).mean().sqrt().item() or 1.0
            nn.init.normal_(layer.weight, std=target_std / norm)
            nn.init.zeros_(layer.bias)
        return self


def splice(inputs_embeds: torch.Tensor, input_ids: torch.Tensor, placeholder_id: int,
           media_embeds: torch.Tensor) -> torch.Tensor:
    """Put projected media into the text sequence: row i of media_embeds replaces the i-th placeholder token
    (row-major over the batch) by ONE masked assignment (as nanoVLM does).

    inputs_embeds (B, T, D), input_ids (B, T), media_embeds (M, D) or (N, K, D) with M = N * K
    (an item's K tokens consecutive) -> (B, T, D) in inputs_embeds' dtype; differentiable w.r.t. both inputs.
    """
    D = inputs_embeds.shape[-1]
    if media_embeds.shape[-1] != D:
        raise ValueError(f"splice: media embeddings have width {media_embeds.shape[-1]}, the LLM's are {D}")
    media = media_embeds.reshape(-1, D)  # (M, D)
    mask = input_ids == placeholder_id  # (B, T)
    n = int(mask.sum())
    if n != media.shape[0]:
        raise ValueError(f"splice: {n} placeholder tokens (id {placeholder_id}) in input_ids but "
                         f"{media.shape[0]} media embeddings; each media item needs tokens_per_item placeholders")
    out = inputs_embeds.clone()  # leave the caller's tensor alone
    out[mask] = media.to(out.dtype)  # (M, D) rows land at the M placeholder positions, in row-major order
    return out


def main():
    p = argparse.ArgumentParser(description="Parameter counts of the projector P (defaults: the paper's "
                                            "imagebind_huge 1024-d -> Vicuna-7B 4096-d).")
    p.add_argument("--in-dim", type=int, default=1024, help="ImageBind embedding size (imagebind_huge: 1024)")
    p.add_argument("--llm-dim", type=int, default=4096, help="LLM hidden size (Vicuna-7B: 4096)")
    p.add_argument("--tokens-per-item", type=int, default=1, help="K, LLM tokens per media item")
    args = p.parse_args()
    for shared in (False, True):
        with torch.device("meta"):
            proj = Projector(args.in_dim, args.llm_dim, args.tokens_per_item, shared=shared)
        n = sum(q.numel() for q in proj.parameters())
        label = "one shared linear (official code)" if shared else "three linears, one per modality (paper)"
        print(f"P, {label}: {n:,} parameters ({args.in_dim} -> {args.tokens_per_item} x {args.llm_dim})")


if __name__ == "__main__":
    main()
