"""Tests of evaluate.py: meta-response scores on a handcrafted split with known answers, SQuAD token F1 on
worked examples, the caption grouping, the CLI (the metric functions: tests/test_metrics.py)."""
import json
import math

import numpy as np
import pytest

import evaluate
from evaluate import caption_sets, score_meta_responses, strict_meta, token_f1
from predictions import all_predictions, read_predictions, write_predictions


def rec(rid, kind, modalities, response, invocations):
    return {"id": rid, "kind": kind, "instruction": f"instruction {rid}",
            "media": [{"modality": m, "path": f"{m}/{rid}"} for m in modalities],
            "target": {"response": response, "invocations": [{"model": m, "prompt": p} for m, p in invocations]}}


RECORDS = [
    rec("r1", "output", ["audio"], "Sure, here is a dog.", [("text-to-image", "a photo of a dog")]),
    rec("r2", "output", [], "Listen.", [("text-to-audio", "a dog barks loudly")]),
    rec("r3", "input", ["image"], "A red circle.", []),
    rec("r4", "input", ["image"], "A blue square.", []),
    rec("r5", "reasoning", ["image", "audio"], "Both.", [("text-to-video", "a red ball rolls"),
                                                         ("text-to-audio", "a bell rings")]),
    rec("r6", "output", ["image"], "Here.", [("text-to-image", "a blue square")]),
]
PREDICTIONS = {
    "r1": json.dumps(RECORDS[0]["target"]),  # perfect
    "r2": '{"response": "Listen.", "invocations": [{"model": "text-to-image", "prompt": "a dog barks loudly"}]}',
    "r3": "A red circle.",  # plain text: a text-only reply, not our JSON
    "r4": '{"response": "A blue',  # truncated JSON: parse reports a problem
    "r5": '```json\n{"response": "Both.", "invocations": [{"model": "text-to-video", '
          '"prompt": "a red ball rolls left"}]}\n```',  # fenced: parses, but not our strict JSON
    # r6: no prediction
}


def test_score_meta_responses_known_answers():
    report = score_meta_responses(RECORDS, PREDICTIONS)
    assert report["n"] == 6 and report["missing"] == ["r6"]
    g = report["groups"]
    # r5's prompt F1: pair 1 {red, ball, rolls, left} vs {red, ball, rolls}: P 3/4, R 1 -> 6/7; pair 2 unpaired: 0
    expected = {  # json, parse, model, prompt_exact, prompt_f1, exact, n, n_prompt
        "all": (2 / 6, 4 / 6, 3 / 6, 2 / 4, (1 + 1 + 3 / 7 + 0) / 4, 1 / 6, 6, 4),
        "kind=output": (2 / 3, 2 / 3, 1 / 3, 2 / 3, 2 / 3, 1 / 3, 3, 3),
        "kind=input": (0, 1 / 2, 1, None, None, 0, 2, 0),
        "kind=reasoning": (0, 1, 0, 0, 3 / 7, 0, 1, 1),
        "audio->image": (1, 1, 1, 1, 1, 1, 1, 1),
        "text->audio": (1, 1, 0, 1, 1, 0, 1, 1),
        "image->text": (0, 1 / 2, 1, None, None, 0, 2, 0),
        "audio+image->audio+video": (0, 1, 0, 0, 3 / 7, 0, 1, 1),
        "image->image": (0, 0, 0, 0, 0, 0, 1, 1),
    }
    assert list(g) == ["all", "kind=input", "kind=output", "kind=reasoning", "audio+image->audio+video",
                       "audio->image", "image->image", "image->text", "text->audio"]
    for name, values in expected.items():
        got = tuple(g[name][k] for k in (*evaluate.METRICS, "n", "n_prompt"))
        assert got == pytest.approx(values), name
    table = evaluate.format_table(report)
    assert "kind=output" in table and "66.7" in table and "1 records had no prediction" in table


def test_strict_meta_is_our_format_only():
    ok = '{"response": "Hi.", "invocations": [{"model": "text-to-audio", "prompt": "rain"}]}'
    assert strict_meta(ok) == json.loads(ok) and strict_meta(f"  {ok}\n") is not None
    assert strict_meta('{"response": "Hi.", "invocations": [], "extra": 1}') is None
    assert strict_meta('{"response": "Hi.", "invocations": [{"model": "text-to-3d", "prompt": "x"}]}') is None
    assert strict_meta(f"Sure! {ok}") is None and strict_meta("[1, 2]") is None


@pytest.mark.parametrize("pred, ref, f1", [
    ("a photo of a cat", "a photo of a dog", 2 / 3),  # articles dropped: {photo, of, cat} vs {photo, of, dog}
    ("The Cat, sat.", "cat sat", 1.0),  # case, punctuation and articles are normalised away
    ("red red ball", "red ball ball", 2 / 3),  # a bag of tokens: each shared token counts min(count) times
    ("a bell rings", "a dog barks", 0.0),
    ("", "", 1.0), ("rain", "", 0.0),
])
def test_token_f1_worked_examples(pred, ref, f1):
    assert token_f1(pred, ref) == pytest.approx(f1)


def test_caption_sets_group_references_by_instruction_and_media():
    a = rec("c1", "input", ["image"], "A red circle.", [])
    b = {**rec("c2", "input", ["image"], "A round red shape.", []), "instruction": a["instruction"],
         "media": a["media"]}  # the same question about the same image: a second reference
    c = rec("c3", "input", ["image"], "A blue square.", [])  # no prediction: left out
    d = rec("c4", "output", ["image"], "Here.", [("text-to-image", "a red circle")])  # not a text answer
    refs, hyps = caption_sets([a, b, c, d], {"c2": '{"response": "A red disc.", "invocations": []}', "c4": "x"})
    assert list(refs.values()) == [["A red circle.", "A round red shape."]]
    assert list(hyps.values()) == ["A red disc."]


def test_cli_scores_a_predictions_file(tmp_path, capsys):
    data, preds = tmp_path / "test.jsonl", tmp_path / "preds.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    preds.write_text("".join(json.dumps({"id": k, "prediction": v}) + "\n" for k, v in PREDICTIONS.items()))
    evaluate.main([str(data), "--predictions", str(preds), "--no-captions", "--out", str(tmp_path / "r.json")])
    report = json.loads((tmp_path / "r.json").read_text())
    assert math.isclose(report["meta_response"]["groups"]["all"]["exact"], 1 / 6)
    assert "kind=reasoning" in capsys.readouterr().out
    preds.write_text('{"id": "r1"}\n')
    with pytest.raises(SystemExit, match="prediction"):
        evaluate.main([str(data), "--predictions", str(preds)])


def test_invalid_records_are_skipped_and_named(tmp_path, capsys):
    """Records are checked by the data tools' validator (data/records.py): a target of {} or 12345 is skipped
    with file:line instead of being scored; a prediction line without a string prediction names its line."""
    data, preds = tmp_path / "test.jsonl", tmp_path / "preds.jsonl"
    bad = [dict(RECORDS[0], id="x1", target={}), dict(RECORDS[0], id="x2", target=12345)]
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS + bad))
    preds.write_text("".join(json.dumps({"id": k, "prediction": v}) + "\n" for k, v in PREDICTIONS.items()))
    evaluate.main([str(data), "--predictions", str(preds), "--no-captions", "--out", str(tmp_path / "r.json")])
    assert json.loads((tmp_path / "r.json").read_text())["meta_response"]["groups"]["all"]["n"] == len(RECORDS)
    err = capsys.readouterr().err
    assert f"skipped 2 of {len(RECORDS) + 2} records" in err and f"test.jsonl:{len(RECORDS) + 2}: 'target'" in err
    preds.write_text('{"id": "r1", "prediction": "ok"}\n\n{"id": "r2", "prediction": null}\n')
    with pytest.raises(SystemExit, match=r'preds.jsonl:3: "prediction" is not a string: every line must be'):
        evaluate.main([str(data), "--predictions", str(preds)])


def test_one_predictions_reader_for_evaluate_generate_and_report(tmp_path):
    """evaluate.py writes the file; evaluate.py and report.py (every line must be good) and generate.py (bad lines
    skipped and named) read it with the one reader of predictions.py: a BOM and CRLF are fine, an integer id is a
    string, a U+2028 inside a prediction is text, not a line break."""
    path = tmp_path / "p.jsonl"
    write_predictions(str(path), {"a": "x\u2028y", "b": "z"})
    assert all_predictions(str(path)) == {"a": "x\u2028y", "b": "z"}
    path.write_bytes(b'\xef\xbb\xbf{"id": 7, "prediction": "p"}\r\n\n{"id": "n", "prediction": null}\n')
    assert read_predictions(str(path)) == ([("7", "p")], [(3, '"prediction" is not a string')])
    with pytest.raises(ValueError, match=r'p.jsonl:3: "prediction" is not a string: every line must be'):
        all_predictions(str(path))


def test_predict_feeds_each_records_media_in_order(tmp_path):
    """--adapter mode: evaluate.predict gives what respond gives on the same features, media in record order."""
    import soundfile as sf
    import torch
    from PIL import Image

    import encode
    from agent import PRESETS, ModaVerse, load_adapter, save_adapter

    torch.manual_seed(0)
    model = ModaVerse.from_config(PRESETS["tiny"])
    with torch.no_grad():  # a random adapter (LoRA B starts at 0), so the media change the answer
        for p in model.trainable_state_dict().values():
            p.copy_(torch.randn(p.shape) * 0.05)
    save_adapter(model, tmp_path / "adapter")
    Image.new("RGB", (64, 64), (220, 20, 20)).save(tmp_path / "red.png")
    sf.write(tmp_path / "beep.wav", 0.5 * np.sin(np.arange(16000) / 16000 * 2 * np.pi * 440), 16000)
    records = [rec("p1", "output", [], "x", [("text-to-image", "y")]),
               {**rec("p2", "input", [], "x", []), "media": [{"modality": "image", "path": "red.png"},
                                                            {"modality": "audio", "path": "beep.wav"}]}]
    cache = str(tmp_path / "cache")
    preds = evaluate.predict(records, str(tmp_path), str(tmp_path / "adapter"), cache_dir=cache, max_new_tokens=6)
    reloaded = load_adapter(str(tmp_path / "adapter")).eval()
    image = encode.encode_files([tmp_path / "red.png"], "image", "tiny", cache_dir=cache, progress=False)[0]
    audio = encode.encode_files([tmp_path / "beep.wav"], "audio", "tiny", cache_dir=cache, progress=False)[0]
    assert preds["p1"] == reloaded.respond("instruction p1", [], max_new_tokens=6)
    assert preds["p2"] == reloaded.respond("instruction p2", [("image", image), ("audio", audio)], max_new_tokens=6)
