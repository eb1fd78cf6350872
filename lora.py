"""Hand-written LoRA (Hu et al. 2022) for the LLM' of ModaVerse's Eq. (1): the frozen LLM is "fine-tuned with a
LoRA adaptor" (paper, Fig. 3), W + (alpha / r) * B @ A on q/k/v/o (official code: r=32, alpha=32, dropout=0.1).

    python lora.py                # LoRA parameter count on Vicuna-7B shapes (meta device: nothing downloaded)
"""
import argparse
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# The shapes of Vicuna-7B (the paper's LLM'), as transformers.LlamaConfig keyword arguments.
VICUNA_7B = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                 intermediate_size=11008, vocab_size=32000)


class LoRALinear(nn.Linear):
    """nn.Linear with a frozen base (`weight`, `bias`: same state-dict keys as nn.Linear) plus a trainable
    low-rank update: y = x W^T + b + dropout(x) A^T B^T * alpha / r.

    lora_A (r, in) and lora_B (out, r) are fp32 whatever the base dtype: AdamW moves a weight by ~lr (1e-4),
    less than half the bf16 spacing (2^-8 relative) at most magnitudes, so in bf16 most updates round to nothing
    (STYLE.md §7). Forward casts them to the activation dtype, a copy of r * (in + out) elements.
    Call apply_lora *after* casting the LLM: `model.to(torch.bfloat16)` would cast them too.
    merge()/unmerge() fold the update into `weight` for inference; they are explicit and idempotent and are not
    tied to train()/eval() (loralib does, which breaks a checkpoint saved in eval mode: loralib issue #34).
    """

    def __init__(self, in_features, out_features, r, alpha, dropout=0.0, bias=True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        if r <= 0:
            raise ValueError(f"LoRA rank r must be positive, got r={r}")
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        self.requires_grad_(False)  # the base weight and bias are frozen
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()  # on the LoRA branch only
        self.merged = False
        self._init_lora(device)

    def _init_lora(self, device):
        # A as nn.Linear's own init, B = 0: the update B @ A starts at exactly zero, so step 0 is the base model.
        self.lora_A = nn.Parameter(torch.empty(self.r, self.in_features, device=device, dtype=torch.float32))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, self.r, device=device, dtype=torch.float32))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    @classmethod
    def from_linear(cls, base: nn.Linear, r, alpha, dropout=0.0):
        """Wrap an existing nn.Linear, sharing (not copying) its weight and bias tensors."""
        new = cls(base.in_features, base.out_features, r, alpha, dropout, bias=base.bias is not None, device="meta")
        base.requires_grad_(False)
        new.weight, new.bias = base.weight, base.bias  # the meta placeholders are replaced by the real tensors
        new._init_lora(base.weight.device)
        return new.train(base.training)  # keep the model's train/eval mode (from_pretrained returns eval)

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B.float() @ self.lora_A.float()) * self.scaling  # (out, in), fp32

    @torch.no_grad()
    def merge(self):  # for inference: a merged layer ignores lora_dropout and gives A, B no gradient
        if not self.merged:  # fp32 sum, one rounding to the base dtype
            self.weight.copy_(self.weight.float() + self.delta_weight())
            self.merged = True

    @torch.no_grad()
    def unmerge(self):
        # Restores the base weight up to one rounding in its dtype (exact restoration would need a copy of W).
        if self.merged:
            self.weight.copy_(self.weight.float() - self.delta_weight())
            self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)  # (..., out)
        if self.merged:  # the update already lives in `weight` (and dropout is off for a merged layer)
            return y
        h = F.linear(self.lora_dropout(x), self.lora_A.to(x.dtype))  # (..., r): x @ A^T first, r << in
        return y + F.linear(h, self.lora_B.to(h.dtype)) * self.scaling  # (..., out)


def apply_lora(model: nn.Module, targets=("q_proj", "k_proj", "v_proj", "o_proj"), r=32, alpha=32, dropout=0.1):
    """Replace every nn.Linear whose name is, or ends with ".<target>", by a LoRALinear (in place), freeze every
    other parameter of `model`, and return the replaced module names. State-dict keys of base weights stay."""
    found = [(n, m) for n, m in model.named_modules()
             if isinstance(m, nn.Linear) and any(n == t or n.endswith("." + t) for t in targets)]
    if not found:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        raise ValueError(f"apply_lora: no nn.Linear matched targets {list(targets)}; linear layers are named "
                         f"e.g. {linears[:6]}")
    for name, module in found:
        if isinstance(module, LoRALinear):
            raise ValueError(f"apply_lora: {name} already has LoRA (apply_lora was called twice?)")
        model.set_submodule(name, LoRALinear.from_linear(module, r, alpha, dropout))
    for n, p in model.named_parameters():
        p.requires_grad_(n.endswith((".lora_A", ".lora_B")))
    return [name for name, _ in found]


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the lora_A / lora_B tensors, keyed as in model.state_dict()."""
    return {k: v for k, v in model.state_dict().items() if k.endswith((".lora_A", ".lora_B"))}


def load_lora_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]):
    """Load LoRA tensors into an unmerged model, strict on the LoRA keys (base weights are not touched)."""
    expected, given = set(lora_state_dict(model)), set(state_dict)
    if expected != given:
        missing, unexpected = sorted(expected - given), sorted(given - expected)
        raise ValueError(f"LoRA state dict mismatch: {len(missing)} missing keys {missing[:3]}, "
                         f"{len(unexpected)} unexpected keys {unexpected[:3]}")
    if any(m.merged for m in model.modules() if isinstance(m, LoRALinear)):
        raise ValueError("load_lora_state_dict: call unmerge_lora(model) first (merged weights hold the old A, B)")
    model.load_state_dict(state_dict, strict=False)  # raises on a shape mismatch


def merge_lora(model: nn.Module):
    for m in model.modules():
        if isinstance(m, LoRALinear):
            m.merge()


def unmerge_lora(model: nn.Module):
    for m in model.modules():
        if isinstance(m, LoRALinear):
            m.unmerge()


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights are counted once. Works on the meta device."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def main():
    p = argparse.ArgumentParser(description="Count the trainable LoRA parameters on Vicuna-7B shapes (a Llama "
                                            "built on the meta device: nothing is allocated or downloaded).")
    p.add_argument("--r", type=int, default=32, help="LoRA rank (official ModaVerse code: 32)")
    p.add_argument("--targets", nargs="+", default=["q_proj", "k_proj", "v_proj", "o_proj"], help="module names")
    args = p.parse_args()
    from transformers import LlamaConfig, LlamaForCausalLM  # only this CLI needs transformers

    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**VICUNA_7B))
    names = apply_lora(model, args.targets, r=args.r, alpha=args.r, dropout=0.0)  # alpha: no effect on counts
    trainable, total = count_parameters(model)
    print(f"Vicuna-7B shapes (hidden 4096, 32 layers): {total - trainable:,} parameters")
    print(f"LoRA r={args.r} on {' '.join(args.targets)}: r * (in + out) per layer")
    print(f"LoRA trainable: {trainable:,} in {len(names)} layers ({100 * trainable / total:.3f}% of {total:,})")


if __name__ == "__main__":
    main()
