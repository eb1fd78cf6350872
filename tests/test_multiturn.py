"""Multi-turn records (data/README.md §1 "turns"): the validator, the LLaVA converter keeping a conversation whole,
agent.build_example supervising every assistant turn and nothing else, media in prompt order, and a multi-turn
file through train.py's tiny preset.

Run: python -m pytest -q tests/test_multiturn.py   (CPU, a few seconds)
"""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import train
from agent import END, IGNORE, PRESETS, ModaVerse, chat_request, format_meta_response, record_turns

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
import convert  # noqa: E402
import summary  # noqa: E402
from records import read_jsonl, validate_record  # noqa: E402
from test_train import args, log, make_data  # noqa: E402  (tests/ is on sys.path under pytest)


def target(text, model=None):
    return {"response": text, "invocations": [{"model": model, "prompt": f"a {text}"}] if model else []}


# 3 turns; media [image, audio]: the image in turn 0, nothing in turn 1, the audio in the last turn
RECORD = {"id": "mt-1", "kind": "output", "instruction": "And draw the instrument of this sound.",
          "media": [{"modality": "image", "path": "a.png"}, {"modality": "audio", "path": "b.wav"}],
          "target": target("flute", "text-to-image"),
          "turns": [{"instruction": "What is in this picture?", "n_media": 1, "target": target("A red kite.")},
                    {"instruction": "What food has its colour?", "target": target("A strawberry.")}]}


def test_validate_record_accepts_turns_and_names_bad_ones():
    assert validate_record(RECORD) == []
    assert validate_record({k: v for k, v in RECORD.items() if k != "turns"}) == []  # single-turn: as before
    bad = dict(RECORD, turns=[{"instruction": " ", "target": target("x")},
                              {"instruction": "Hi", "n_media": True, "target": {"response": ""}},
                              {"instruction": "Hi", "n_media": 3, "target": target("x", "text-to-3d")}])
    assert validate_record(bad) == [
        "turns[0].instruction must be a non-empty string",
        "turns[1].n_media must be a whole number >= 0, got True",
        "turns[1].target.invocations must be a list (may be empty)",
        "turns[2].target.invocations[0].model must be one of ('text-to-image', 'text-to-video', 'text-to-audio')",
        "the turns attach 3 media items, 'media' lists 2"]
    # an earlier turn of an output conversation may answer in words; without words it is refused
    assert validate_record(dict(RECORD, turns=[{"instruction": "Hi", "target": target("")}])) == [
        "a turn without invocations needs a non-empty turns[0].target.response"]
    assert validate_record(dict(RECORD, turns={"instruction": "Hi"})) == [
        "'turns' must be a list of earlier turns (may be absent)"]


def test_record_turns_split_media_in_prompt_order():
    (q0, m0, t0), (q1, m1, _), (q2, m2, t2) = record_turns(RECORD)
    assert (q0, q2) == ("What is in this picture?", RECORD["instruction"]) and t2 == RECORD["target"]
    assert [m["path"] for m in m0] == ["a.png"] and m1 == [] and [m["path"] for m in m2] == ["b.wav"]
    single = {k: v for k, v in RECORD.items() if k != "turns"}
    assert record_turns(single) == [(single["instruction"], single["media"], single["target"])]
    # what evaluate.py and train.py's val_respond ask: the last turn, the earlier ones (with their targets) as history
    q, media, history = chat_request(RECORD, ["image feature", "audio feature"])
    assert (q, media) == (RECORD["instruction"], ["audio feature"])
    assert history == [("What is in this picture?", ["image feature"], format_meta_response(target("A red kite."))),
                       ("What food has its colour?", [], format_meta_response(target("A strawberry.")))]
    assert chat_request(single, ["a", "b"]) == (single["instruction"], ["a", "b"], [])


def test_convert_llava_keeps_conversations_whole(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.jpg").write_bytes(b"x")
    talk = [("<image>\nWhat is this?", "A bus."), ("Which colour?", "Red."), ("Is it moving?", "No.")]
    items = [{"id": "three", "image": "a.jpg", "conversations": [
                 {"from": f, "value": v} for q, a in talk for f, v in (("human", q), ("gpt", a))]},
             {"id": "one", "image": "a.jpg", "conversations": [{"from": "human", "value": "Describe.<image>"},
                                                               {"from": "gpt", "value": "A bus."}]}]
    (tmp_path / "llava.json").write_text(json.dumps(items))
    out = tmp_path / "llava.jsonl"
    convert.main(["llava", str(tmp_path / "llava.json"), "--root", str(tmp_path / "img"), "--out", str(out)])
    three, one = read_jsonl(str(out))
    assert three["id"] == "llava-three" and three["instruction"] == "Is it moving?"
    assert three["target"]["response"] == "No." and three["media"] == [{"modality": "image", "path": "img/a.jpg"}]
    assert three["turns"] == [{"instruction": "What is this?", "n_media": 1, "target": target("A bus.")},
                              {"instruction": "Which colour?", "n_media": 0, "target": target("Red.")}]
    assert "turns" not in one and one["instruction"] == "Describe." and one["media"][0]["path"] == "img/a.jpg"


def test_summary_counts_turns_and_the_whole_conversation(tmp_path):
    path = tmp_path / "r.jsonl"
    single = {k: v for k, v in RECORD.items() if k != "turns"}
    path.write_text(json.dumps(RECORD) + "\n" + json.dumps(single) + "\n")
    s = summary.summarize([str(path)])
    assert s["turns"] == {1: 1, 3: 1} and "by number of turns" in summary.report(s)
    words = lambda *texts: sum(len(t.split()) for t in texts)  # noqa: E731
    every = [RECORD["instruction"], *(t["instruction"] for t in RECORD["turns"])]
    assert s["lengths"]["instruction"]["max"] == words(*every)


@pytest.fixture(scope="module")
def model():
    return ModaVerse.from_config(PRESETS["tiny"]).eval()


def runs(labels):
    """[start, end) of each run of supervised positions."""
    sup = [i for i, x in enumerate(labels) if x != IGNORE]
    starts = [i for i in sup if i - 1 not in sup]
    return [(s, next(i for i in range(s, len(labels) + 1) if i == len(labels) or labels[i] == IGNORE)) for s in starts]


def test_every_assistant_turn_is_supervised_and_nothing_else(model):
    ex = model.build_example(RECORD)
    ids, labels = ex["input_ids"], ex["labels"]
    answers = [format_meta_response(t) for t in (RECORD["turns"][0]["target"], RECORD["turns"][1]["target"],
                                                 RECORD["target"])]
    spans = runs(labels)
    assert len(spans) == 3 and spans[-1][1] == len(ids)  # one run per assistant turn; the last ends the sequence
    decode = model.tokenizer.decode
    for (s, e), answer in zip(spans, answers):
        assert labels[s:e] == ids[s:e] and decode(ids[s:e]) == f" {answer}{END}"  # the answer and END, exactly
        assert decode(ids[:s]).endswith("### Assistant:")  # right after the turn's prompt
    assert decode(ids[spans[0][1]:spans[1][0]]) == "\n### Human: What food has its colour?\n### Assistant:"
    # the image's placeholder is in turn 0's prompt, the audio's in the last turn's: media in prompt order
    ph = [i for i, t in enumerate(ids) if t == model.placeholder_id]
    assert len(ph) == 2 and ph[0] < spans[0][0] and spans[1][1] < ph[1] < spans[2][0]
    # training's prompt of the last turn is the prompt the chat builds from the same history
    history = [(q, m, format_meta_response(t)) for q, m, t in record_turns(RECORD)[:2]]
    chat = model.encode_chat([*history, (RECORD["instruction"], RECORD["media"][1:], None)])[0]
    assert ids[:spans[2][0]] == chat


def test_placeholders_get_the_features_of_their_own_turn(model):
    """train.py hands embed() the record's media rows in `media` order: each lands at its turn's placeholder."""
    ex = model.build_example(RECORD)
    ids = torch.tensor([ex["input_ids"]])
    feats = torch.randn(2, model.cfg.feat_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        embeds = model.embed(ids, feats, [m["modality"] for m in RECORD["media"]])[0]
        image, audio = model.projector(feats[:1], ["image"])[0, 0], model.projector(feats[1:], ["audio"])[0, 0]
    ph = (ids[0] == model.placeholder_id).nonzero()[:, 0].tolist()
    assert torch.equal(embeds[ph[0]], image) and torch.equal(embeds[ph[1]], audio)


def test_multi_turn_file_trains_on_the_tiny_preset(tmp_path):
    """Records of test_train's data merged pairwise into two-turn conversations (media of both turns, in order)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = {"cache": str(tmp_path / "cache")}
        flat = read_jsonl(make_data(tmp_path, "flat", 8, 0, data["cache"]))
        merged = [dict(b, id=f"mt-{i}", media=a["media"] + b["media"],
                       turns=[{"instruction": a["instruction"], "n_media": len(a["media"]), "target": a["target"]}])
                  for i, (a, b) in enumerate(zip(flat[::2], flat[1::2]))]
        assert any(len(r["media"]) == 3 for r in merged)  # an earlier turn's audio + image, then the last's image
        data["train"] = str(tmp_path / "train.jsonl")
        Path(data["train"]).write_text("".join(json.dumps(r) + "\n" for r in merged))
        data["val"] = data["train"]
        train.main(args(data, tmp_path / "out", "--max_steps", 2, "--batch_size", 2, "--micro_batch", 2))
        losses = [e["loss"] for e in log(tmp_path / "out") if "loss" in e]
        assert len(losses) == 2 and all(np.isfinite(losses))
    finally:
        torch.set_num_threads(threads)
