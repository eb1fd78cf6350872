"""Contract of agent.py (LLM' of Eq. 1: P + the LoRA-adapted LLM): what train.py, chat.py and evaluate.py rely on.

ModaVerse.from_config(PRESETS["tiny"]) builds the model; build_example(record) gives input_ids and labels that
supervise exactly the meta-response format_meta_response(target) and END (one placeholder per media item and
projected token); collate pads them into (B, T) tensors; forward(..., media_feats, media_modalities, labels).loss is
a differentiable scalar in which the media take part; respond / respond_batch return strings (in request order,
without END); format_meta_response is what generate.parse_meta_response reads back; save_adapter writes
adapter.safetensors + config.json, which load_adapter turns back into the same model (same logits), and the saved
tensors are exactly what train.py optimises.
"""
import json
import os

import pytest
import torch
from safetensors.torch import load_file

from agent import END, IGNORE, PRESETS, AgentConfig, ModaVerse, chat_request, format_meta_response, load_adapter
from agent import save_adapter
from generate import parse_meta_response

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

FEAT = PRESETS["tiny"].feat_dim
TARGET = {"response": "Voilà, a \"red\" kite!", "invocations": [{"model": "text-to-image", "prompt": "a red kite"},
                                                              {"model": "text-to-audio", "prompt": "wind"}]}


def record(i, modalities, response="Here it is."):
    return {"id": f"r{i}", "instruction": f"Question number {i}: draw it.",
            "media": [{"modality": m, "path": f"{m}-{i}"} for m in modalities],
            "target": {"response": response, "invocations": []}}


def feats(n, seed=0):
    return torch.randn(n, FEAT, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def model():
    """The tiny preset with a random (trained-looking) adapter: a fresh LoRA B is zero and hides mistakes."""
    m = ModaVerse.from_config(PRESETS["tiny"])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for v in m.trainable_state_dict().values():
            if v.is_floating_point() and v.dim() > 1:  # weights, not P's standardisation buffers
                v.copy_(torch.randn(v.shape, generator=g) * 0.05)
    return m.eval()


def test_meta_response_round_trips_through_the_parser():
    meta = parse_meta_response(format_meta_response(TARGET))
    assert meta.response == TARGET["response"] and meta.problems == []
    assert [(i.model, i.prompt) for i in meta.invocations] == [(d["model"], d["prompt"]) for d in TARGET["invocations"]]


def test_build_example_supervises_the_meta_response_only(model):
    rec = record(0, ["image", "audio"]) | {"target": TARGET}
    ex = model.build_example(rec)
    ids, labels = ex["input_ids"], ex["labels"]
    assert len(ids) == len(labels) and all(isinstance(t, int) for t in ids)
    assert all(lab in (IGNORE, t) for lab, t in zip(labels, ids))  # a label is its own token or ignored
    answer = model.tokenizer.decode([lab for lab in labels if lab != IGNORE])
    assert answer.strip() == format_meta_response(TARGET) + END
    assert rec["instruction"] in model.tokenizer.decode(ids)
    assert ids.count(model.placeholder_id) == 2 * model.cfg.tokens_per_item
    with pytest.raises(ValueError):  # train.py skips or stops on a record longer than max_len; never cut
        model.build_example(record(1, []) | {"instruction": "word " * (model.cfg.max_len + 10)})


def test_collate_pads_and_masks(model):
    exs = [model.build_example(record(0, ["image"])), model.build_example(record(1, [], "A much longer answer " * 3))]
    b = model.collate(exs)
    lengths = [len(e["input_ids"]) for e in exs]
    T = max(lengths)
    assert all(b[k].shape == (2, T) for k in ("input_ids", "attention_mask", "labels"))
    for row, (e, n) in enumerate(zip(exs, lengths)):
        assert b["input_ids"][row, :n].tolist() == e["input_ids"] and b["labels"][row, :n].tolist() == e["labels"]
        assert b["attention_mask"][row].tolist() == [1] * n + [0] * (T - n)
        assert (b["labels"][row, n:] == IGNORE).all() and (b["input_ids"][row, n:] != model.placeholder_id).all()


def test_forward_loss_is_differentiable_and_reads_the_media(model):
    b = model.collate([model.build_example(record(0, ["image", "audio"])), model.build_example(record(1, ["video"]))])
    mods = ["image", "audio", "video"]
    out = model(**b, media_feats=feats(3), media_modalities=mods)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("projector.") for n in grads) and any("lora_" in n for n in grads)
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values())
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        other = model(**b, media_feats=feats(3, seed=1), media_modalities=mods).loss
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], media_feats=feats(3),
                       media_modalities=mods).logits
    assert abs(other.item() - out.loss.item()) > 1e-5  # the features reach the LLM
    assert logits.shape[:2] == b["input_ids"].shape and logits.shape[2] >= len(model.tokenizer) - 1


def test_respond_and_respond_batch_return_strings_in_order(model):
    f = feats(2)
    requests = [("Draw a cat.", [("image", f[0])], None), ("Hi", [], None),
                chat_request(record(2, ["audio"]) | {"turns": [{"instruction": "Before.", "n_media": 0,
                                                                "target": TARGET}]}, [("audio", f[1])])]
    texts = model.respond_batch(requests, max_new_tokens=6, batch_size=2)
    assert len(texts) == 3 and all(isinstance(t, str) and END not in t for t in texts)
    assert texts == [model.respond(q, m, h, max_new_tokens=6) for q, m, h in requests]  # greedy: batch == alone


def test_adapter_folder_round_trips_and_holds_what_train_optimises(model, tmp_path):
    b = model.collate([model.build_example(record(0, ["audio", "image"]))])
    del b["labels"]
    args = dict(media_feats=feats(2), media_modalities=["audio", "image"])
    save_adapter(model, str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["adapter.safetensors", "config.json"]
    assert AgentConfig(**json.loads((tmp_path / "config.json").read_text())) == model.cfg
    saved = load_file(tmp_path / "adapter.safetensors")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable <= set(saved) and all(k.startswith(("projector.", "llm.")) for k in saved)
    assert set(saved) == set(model.trainable_state_dict())  # train.py checkpoints this dict, resumes from it
    loaded = load_adapter(str(tmp_path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**b, **args).logits, model(**b, **args).logits, rtol=0, atol=1e-6)
        loaded.load_trainable_state_dict({k: torch.zeros_like(v) if "lora_" in k else v for k, v in saved.items()})
        assert (loaded(**b, **args).logits - model(**b, **args).logits).abs().max() > 1e-3  # LoRA is in the file
