"""The `paper` preset's code path end to end, offline (issue 17), and the official-checkpoint converter.

Tiny random models of the paper's CLASSES are saved to local folders as a user's downloads would be: a
LlamaForCausalLM with a Llama tokenizer (Vicuna's classes), StableDiffusionPipeline, TextToVideoSDPipeline,
AudioLDMPipeline, and an `imagebind_huge` checkpoint file with ImageBindModel's keys at a small width (the real
file is 4.8 GB). Every socket connection fails the test: with local files given, nothing may be downloaded.
"""
import json
import socket
import string
from collections import OrderedDict

import huggingface_hub.constants
import numpy as np
import pytest
import torch
import transformers
from PIL import Image

import agent
import chat
import encode
import evaluate
import generate
import preprocess
import train
import zoo_tiny
from data import official_checkpoint

ATTEMPTS = []  # every network connection tried while the module runs


def small_huge(pretrained=False):
    """imagebind_huge's architecture (ImageBindModel, 1024-d output) at width 32: its checkpoint has the same keys
    as the real one, in small shapes. Asserts it is never asked for the pretrained (downloaded) weights."""
    assert not pretrained, "imagebind_huge(pretrained=True) downloads: a local checkpoint was given"
    from imagebind.models.imagebind_model import ImageBindModel

    w = dict(embed_dim=32, num_blocks=1, num_heads=2)
    return ImageBindModel(out_embed_dim=1024, **{f"{m}_{k}": v for m in ("vision", "audio", "text", "depth", "thermal",
                                                                          "imu") for k, v in w.items()})


def llama_tokenizer():
    """A Llama tokenizer (the class Vicuna's folder loads as): byte-fallback BPE, '▁' for spaces, <unk> <s> </s>."""
    from tokenizers import Tokenizer, decoders, models, normalizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for ch in "▁" + string.ascii_letters + string.digits + string.punctuation:
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    return transformers.LlamaTokenizer(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def tiny_llama(vocab_size):
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, bos_token_id=1, eos_token_id=2))


def safety_checker():
    """Stable Diffusion v1.5's safety checker (a CLIP vision tower + concept embeddings) and its image processor."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker

    tower = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=1)
    config = transformers.CLIPConfig(text_config=tower, vision_config=tower | dict(image_size=32, patch_size=8),
                                     projection_dim=16)
    return {"safety_checker": StableDiffusionSafetyChecker(config),
            "feature_extractor": transformers.CLIPImageProcessor(crop_size=32, size=32)}


@pytest.fixture(scope="module")
def offline():
    def refuse(*args, **kwargs):
        ATTEMPTS.append(args)
        raise OSError("network access in an offline test")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket, "create_connection", refuse)
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import, so set here too
        preprocess._load_package()  # imagebind imports only with this stack's fixes (encode.load_encoder does the same)
        from imagebind.models import imagebind_model
        mp.setattr(imagebind_model, "imagebind_huge", small_huge)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny models: threads on 2 shared cores only add overhead
        encode.load_encoder.cache_clear()
        yield
        encode.load_encoder.cache_clear()
        torch.set_num_threads(threads)
    assert not ATTEMPTS, f"network access attempted: {ATTEMPTS}"


@pytest.fixture(scope="module")
def paper(tmp_path_factory, offline):
    """Local folders of the paper's model classes and a small data set (4 train, 2 test records with images)."""
    root = tmp_path_factory.mktemp("paper")
    tok = llama_tokenizer()
    tok.save_pretrained(root / "llm")
    tiny_llama(len(tok)).save_pretrained(root / "llm")
    torch.manual_seed(0)
    torch.save(small_huge().state_dict(), root / "imagebind_huge.pth")
    for model in generate.MODELS:
        pipe = zoo_tiny.tiny_pipeline(model)
        if model == "text-to-image":  # as in the real folder: with its safety checker and feature extractor
            pipe = type(pipe)(**pipe.components | safety_checker(), requires_safety_checker=True)
        pipe.save_pretrained(root / model)
    (root / "data").mkdir()
    colours = {"red": (255, 0, 0), "green": (0, 160, 0), "blue": (0, 0, 255), "yellow": (255, 220, 0)}
    for name, rgb in colours.items():
        Image.new("RGB", (32, 32), rgb).save(root / "data" / f"{name}.png")
    records = [{"id": f"r{i}", "kind": "output", "instruction": "Draw something of this colour.",
                "media": [{"modality": "image", "path": f"{c}.png"}],
                "target": {"response": "Here.", "invocations": [{"model": "text-to-image", "prompt": f"a {c} kite"}]}}
               for i, c in enumerate(colours)]
    for split, recs in (("train", records), ("test", records[:2])):
        (root / "data" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return root


def test_paper_preset_path_offline_with_local_checkpoints(paper, capsys):
    ckpt, cache, out = str(paper / "imagebind_huge.pth"), str(paper / "cache"), str(paper / "out")
    data, test = str(paper / "data/train.jsonl"), str(paper / "data/test.jsonl")
    # encode.py: the paper's encoder from a local file (the paper preset does not encode by itself)
    assert encode.main([data, "--encoder", "huge", "--encoder_checkpoint", ckpt, "--cache_dir", cache]) == 0
    # train.py: the paper preset's code path (bf16 Vicuna-class LLM, huge encoder, LoRA r32, checkpointing), 2 steps
    train.main(["--preset", "paper", "--llm", str(paper / "llm"), "--encoder_checkpoint", ckpt, "--data", data,
                "--val_data", "", "--out_dir", out, "--cache_dir", cache, "--max_steps", "2", "--batch_size", "2",
                "--micro_batch", "2"])
    config = json.loads((paper / "out/config.json").read_text())
    assert config["encoder_checkpoint"] == ckpt and config["encoder"] == "huge" and config["lora_r"] == 32
    # the agent answers with an image attached; the feature comes from the local checkpoint's weights
    model = agent.load_adapter(out).eval()
    feat = encode.encode_files([paper / "data/red.png"], "image", model.cfg.encoder, cache,
                               checkpoint=model.cfg.encoder_checkpoint)
    reference = small_huge()
    reference.load_state_dict(torch.load(ckpt, weights_only=True))
    with torch.no_grad():
        x = encode.preprocess(paper / "data/red.png", "image")[None]
        expected = reference.eval()({"vision": x})["vision"][0].numpy()
    np.testing.assert_allclose(feat[0], expected, atol=1e-5)
    answer = model.respond("Draw something of this colour.", [("image", feat[0])], max_new_tokens=4)
    # ... and through the user's CLI, which takes the encoder checkpoint from the adapter's config.json
    capsys.readouterr()
    chat.main(["Draw something of this colour.", "--adapter", out, "--image", str(paper / "data/red.png"),
               "--max_new_tokens", "4", "--cache_dir", cache, "--json"])
    assert capsys.readouterr().out.strip() == answer.strip()  # --json: the raw meta-response, the same greedy text
    ids = torch.tensor([model.encode_chat([("Draw this.", [("image", None)], None)])[0]])
    with torch.no_grad():  # the image reaches the LLM: another feature, other logits
        a, b = (model(ids, media_feats=f[None], media_modalities=["image"]).logits for f in (feat[0], -feat[0]))
    assert not torch.allclose(a, b)
    # generate.py renders through the three local pipelines (text-to-video with DPM-Solver++, as the official code)
    meta = json.dumps({"response": "Here.",
                       "invocations": [{"model": m, "prompt": "a red kite"} for m in generate.MODELS]})
    generate.main([meta, "--out", str(paper / "gen"), "--dtype", "float32", "--device", "cpu",
                   *[a for m in generate.MODELS for a in (f"--{m}", str(paper / m))],
                   "--image-steps", "2", "--image-size", "32", "--video-steps", "2", "--video-size", "32",
                   "--video-frames", "2", "--audio-steps", "2", "--audio-seconds", "0.064"])
    written = json.loads((paper / "gen/generated.json").read_text())["outputs"]
    assert [(w["model"], w["checkpoint"]) for w in written] == [(m, str(paper / m)) for m in generate.MODELS]
    assert all((paper / "gen" / w["file"]).stat().st_size > 0 for w in written)
    assert written[1]["scheduler"] == "DPMSolverMultistepScheduler"
    # evaluate.py --adapter: encodes with the adapter's recorded checkpoint and scores
    preds, report = paper / "preds.jsonl", paper / "report.json"
    evaluate.main([test, "--adapter", out, "--cache_dir", cache, "--no-captions", "--max_new_tokens", "8",
                   "--save_predictions", str(preds), "--out", str(report)])
    scores = json.loads(report.read_text())["meta_response"]["groups"]["all"]
    texts = [json.loads(line)["prediction"] for line in preds.read_text().splitlines()]
    assert scores["n"] == 2 and scores["json"] == sum(evaluate.strict_meta(t) is not None for t in texts) / 2
    assert not ATTEMPTS


def official_layout(tok, llm, in_dim=1024, r=4, seed=1):
    """A checkpoint in the official release's layout (modaverse/model/ds.py save_model): nn.Parameters by name."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.nn.Parameter(0.05 * torch.randn(*shape, generator=g))  # noqa: E731
    D, V = llm.config.hidden_size, len(tok)
    sd = OrderedDict({"linear_proj.weight": rand(D, in_dim), "linear_proj.bias": rand(D)})
    for i in range(llm.config.num_hidden_layers):
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            layer = getattr(llm.model.layers[i].self_attn, name)
            prefix = f"LLM.base_model.model.model.layers.{i}.self_attn.{name}"
            sd[f"{prefix}.lora_A.default.weight"] = rand(r, layer.in_features)
            sd[f"{prefix}.lora_B.default.weight"] = rand(layer.out_features, r)
    sd["LLM.base_model.model.model.embed_tokens.weight"] = rand(V, D)
    sd["LLM.base_model.model.lm_head.weight"] = rand(V, D)
    return sd


def test_official_checkpoint_converts_to_the_same_model(tmp_path):
    """data/official_checkpoint.py: the converted adapter's logits equal a hand-written forward of the official
    layout (peft LoRA merged by hand, scaling alpha / r; resized vocabulary with the trained embeddings and head;
    P(x) between the <Media> and </Media> embeddings)."""
    tok = llama_tokenizer()
    tok.save_pretrained(tmp_path / "7b_v0")  # the base LLM, as Vicuna v0's folder
    tiny_llama(len(tok)).save_pretrained(tmp_path / "7b_v0")
    tok.add_tokens(["<Media>", "</Media>", "[TEXT]", "[IMAGE]", "[AUDIO]", "[VIDEO]"])  # as the official code
    release = tmp_path / "ModaVerse-7b"
    tok.save_pretrained(release)
    sd = official_layout(tok, tiny_llama(len(tok) - 6))
    torch.save(sd, release / "pytorch_model.pt")
    official_checkpoint.main([str(release), "--llm", str(tmp_path / "7b_v0"), "--out", str(tmp_path / "conv"),
                              "--dtype", "float32", "--lora_alpha", "8"])
    model = agent.load_adapter(str(tmp_path / "conv")).eval()
    assert model.cfg.shared_projector and model.cfg.lora_r == 4 and len(model.tokenizer) == len(tok)

    ref = tiny_llama(len(tok) - 6)  # the same base weights (seeded), then the official changes by hand
    ref.resize_token_embeddings(len(tok), mean_resizing=False)
    with torch.no_grad():
        ref.model.embed_tokens.weight.copy_(sd["LLM.base_model.model.model.embed_tokens.weight"])
        ref.lm_head.weight.copy_(sd["LLM.base_model.model.lm_head.weight"])
        for i, layer in enumerate(ref.model.layers):
            for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                prefix = f"LLM.base_model.model.model.layers.{i}.self_attn.{name}"
                delta = sd[f"{prefix}.lora_B.default.weight"] @ sd[f"{prefix}.lora_A.default.weight"] * (8 / 4)
                getattr(layer.self_attn, name).weight += delta
    media_open, media_close = tok.convert_tokens_to_ids(["<Media>", "</Media>"])
    text = tok("### Human:", add_special_tokens=False).input_ids
    rest = tok("Draw it.\n### Assistant: Modality: [IMAGE]", add_special_tokens=False).input_ids
    ids = [1, *text, media_open, model.placeholder_id, media_close, *rest]
    feat = torch.randn(1, 1024, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = model(torch.tensor([ids]), media_feats=feat, media_modalities=["audio"]).logits
        embeds = ref.model.embed_tokens(torch.tensor([ids]))
        embeds[0, ids.index(model.placeholder_id)] = feat[0] @ sd["linear_proj.weight"].T + sd["linear_proj.bias"]
        theirs = ref(inputs_embeds=embeds).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    assert tok.convert_tokens_to_ids("[IMAGE]") == model.tokenizer.convert_tokens_to_ids("[IMAGE]") >= 32 + 256


def test_converter_refuses_other_layouts(tmp_path):
    torch.save({"linear_proj.weight": torch.zeros(2, 2), "something.else": torch.zeros(1)},
               tmp_path / "pytorch_model.pt")
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(SystemExit, match="not the official ModaVerse layout.*something.else"):
        official_checkpoint.main([str(tmp_path), "--llm", "x", "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="nope.pth: no such file"):
        official_checkpoint.main([str(tmp_path), "--llm", "x", "--out", str(tmp_path / "o"),
                                  "--encoder_checkpoint", str(tmp_path / "nope.pth")])
