"""Convert the official ModaVerse release (ModaVerse-7b-v0, github.com/xinke-wang/ModaVerse) into this project's
adapter folder (adapter.safetensors + config.json), so the paper's own trained model runs in our code: agent.py's
ModaVerse, chat.py, evaluate.py --adapter.

The official layout (modaverse/model/ds.py `save_model`: every parameter of its ModaVerse module with
requires_grad, in one torch pickle `pytorch_model.pt`; configs/base.py for the settings):

  linear_proj.weight (4096, 1024), .bias (4096,)          P: ONE linear layer shared by all modalities
  LLM.base_model.model.model.layers.{i}.self_attn.{q,k,v,o}_proj.lora_A.default.weight (r, 4096)   peft LoRA,
  LLM.base_model.model.model.layers.{i}.self_attn.{q,k,v,o}_proj.lora_B.default.weight (4096, r)   r = alpha = 32
  LLM.base_model.model.model.embed_tokens.weight (V, 4096) the whole input embedding, trained (force_training_layers)
  LLM.base_model.model.lm_head.weight (V, 4096)           the whole LM head, trained

V = the base vocabulary + six added tokens (<Media>, </Media>, [TEXT], [IMAGE], [AUDIO], [VIDEO]); the release's
folder holds that tokenizer (tokenizer.model / tokenizer.json, added_tokens.json, ...), which is copied into
OUT/tokenizer. The base LLM is Vicuna-7B v0 (a delta on LLaMA-1 weights, applied by FastChat): pass its folder.

    python data/official_checkpoint.py .checkpoints/ModaVerse-7b --llm .checkpoints/7b_v0 \\
        --encoder_checkpoint .checkpoints/imagebind_huge.pth --out out/official
    python chat.py --adapter out/official --image cat.jpg "Generate a sound this animal makes"

The converted model answers in the official text format (`Modality: [AUDIO] Prompt: a cat meowing ###`), which
generate.parse_meta_response reads. It imports no stage of ours (data/ tools never do): the key names of our
adapter are written out here and checked by tests/test_official_checkpoint.py, which loads the result with
agent.load_adapter and compares its logits with a hand-written forward of the official layout.
"""
import argparse
import json
import os
import re
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

MODALITIES = ("image", "video", "audio")  # project.MODALITIES: the rows of P's (unused) standardisation buffers
LORA = re.compile(r"LLM\.base_model\.model\.(model\.layers\.\d+\.self_attn\.[qkvo]_proj)\.lora_([AB])\.default\.weight")
RENAME = {"linear_proj.weight": "projector.proj.shared.weight", "linear_proj.bias": "projector.proj.shared.bias",
          "LLM.base_model.model.model.embed_tokens.weight": "llm.model.embed_tokens.weight",  # llm_files.EMBEDDING_KEYS
          "LLM.base_model.model.lm_head.weight": "llm.lm_head.weight"}
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")


def convert_state_dict(official: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official key -> our key (agent.ModaVerse.trainable_state_dict's names). P and LoRA in fp32 (our trainable
    weights always are); the embeddings keep their dtype (they are cast to the LLM's when loaded)."""
    ours, unknown = {}, []
    for key, value in official.items():
        value = value.detach()
        if m := LORA.fullmatch(key):
            ours[f"llm.{m[1]}.lora_{m[2]}"] = value.float()
        elif key in RENAME:
            ours[RENAME[key]] = value.float() if key.startswith("linear_proj") else value
        else:
            unknown.append(key)
    missing = [k for k in RENAME if RENAME[k] not in ours]
    if unknown or missing or not any(".lora_A" in k for k in ours):
        raise ValueError(f"not the official ModaVerse layout: unknown keys {unknown[:4]}, missing {missing}"
                         + ("" if any(".lora_A" in k for k in ours) else ", no LoRA tensors"))
    in_dim = ours["projector.proj.shared.weight"].shape[1]
    ours |= {"projector.feat_mean": torch.zeros(len(MODALITIES), in_dim),  # no standardisation: the official P
             "projector.feat_std": torch.ones(len(MODALITIES), in_dim),   # reads raw ImageBind features
             "projector.feat_count": torch.zeros(len(MODALITIES))}
    return ours


def agent_config(sd: dict, llm: str, tokenizer: str, encoder_checkpoint: str | None, dtype: str, alpha: float) -> dict:
    """agent.AgentConfig's fields for the official model (configs/base.py), as config.json holds them."""
    targets = sorted({k.split(".")[-2] for k in sd if k.endswith(".lora_A")})
    return dict(llm=llm, tokenizer=tokenizer, dtype=dtype, encoder="huge", encoder_checkpoint=encoder_checkpoint,
                feat_dim=sd["projector.proj.shared.weight"].shape[1], tokens_per_item=1, shared_projector=True,
                lora_r=next(v.shape[0] for k, v in sd.items() if k.endswith(".lora_A")), lora_alpha=alpha,
                lora_dropout=0.1, lora_targets=targets, max_len=512, placeholder_token=None)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("official", help="the release's folder (pytorch_model.pt + its tokenizer files)")
    p.add_argument("--llm", required=True, help="the base LLM it was trained on: Vicuna-7B v0 (folder or hub id)")
    p.add_argument("--out", required=True, help="the adapter folder to write")
    p.add_argument("--encoder_checkpoint", metavar="FILE", help="imagebind_huge.pth on this machine (recorded)")
    p.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"),
                   help="the frozen LLM's dtype (the official demo runs in float16)")
    p.add_argument("--lora_alpha", type=float, default=32, help="not stored in the release: configs/base.py's 32")
    args = p.parse_args(argv)
    weights = Path(args.official, "pytorch_model.pt")
    problems = [f"{weights}: not found" if not weights.is_file() else None,
                f"--encoder_checkpoint {args.encoder_checkpoint}: no such file"
                if args.encoder_checkpoint and not os.path.isfile(args.encoder_checkpoint) else None,
                f"--out {args.out}: is a file" if os.path.isfile(args.out) else None,
                f"{args.official}: no tokenizer files ({', '.join(TOKENIZER_FILES)})"
                if not any(Path(args.official, f).is_file() for f in TOKENIZER_FILES) else None]
    if any(problems):
        sys.exit("official_checkpoint.py: " + "; ".join(filter(None, problems)))
    try:  # tensors only: a pickle from the internet runs no code (weights_only); mmap: no second copy in memory
        sd = convert_state_dict(torch.load(weights, map_location="cpu", weights_only=True, mmap=True))
    except (ValueError, RuntimeError) as e:
        sys.exit(f"official_checkpoint.py: {weights}: {e}")
    out, tokenizer = Path(args.out), Path(args.out, "tokenizer")
    tokenizer.mkdir(parents=True, exist_ok=True)
    for f in TOKENIZER_FILES:
        if Path(args.official, f).is_file():
            shutil.copyfile(Path(args.official, f), tokenizer / f)
    config = agent_config(sd, args.llm, str(tokenizer.resolve()), args.encoder_checkpoint and
                          os.path.abspath(args.encoder_checkpoint), args.dtype, args.lora_alpha)
    for name, write in [("adapter.safetensors", lambda tmp: save_file({k: v.contiguous() for k, v in sd.items()}, tmp)),
                        ("config.json", lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2)))]:
        tmp = out / f"{name}.tmp{os.getpid()}"
        write(tmp)
        os.replace(tmp, out / name)  # atomic, as agent.save_adapter
    lora = sum(v.numel() for k, v in sd.items() if ".lora_" in k)
    print(f"wrote {out}: P (shared, {config['feat_dim']} -> {sd['projector.proj.shared.weight'].shape[0]}), LoRA "
          f"r={config['lora_r']} on {config['lora_targets']} ({lora:,} weights), embeddings and LM head of "
          f"{sd['llm.lm_head.weight'].shape[0]} tokens; tokenizer in {tokenizer}")


if __name__ == "__main__":
    main()
