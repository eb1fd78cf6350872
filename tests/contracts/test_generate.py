"""Contract of generate.py (the model zoo M of Eq. 1 and the meta-response parser): what agent.py, chat.py,
evaluate.py, metrics.py and report.py rely on.

MODELS names the three generators and their file types; parse_meta_response(text) never raises and returns
.response, .invocations (each .model, .prompt) and .problems for our JSON format (with or without prose and
fences around it), and plain text as the reply; generate(meta, out_dir, zoo) writes NN-<model>.<png|mp4|wav>
files that load back with PIL, imageio and soundfile, and out_dir/generated.json listing them (file, model,
prompt), with the tiny zoo. A new generator or a faster pipeline passes; another file layout does not.
"""
import dataclasses
import json

import imageio.v3 as iio
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from generate import MODELS, PRESETS, MetaResponse, ModelZoo, generate, parse_meta_response

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

META = {"response": "Here you are: a kite, its flight and its sound.", "invocations": [
    {"model": "text-to-image", "prompt": "a red kite"}, {"model": "text-to-video", "prompt": "a kite flying"},
    {"model": "text-to-audio", "prompt": "wind in a kite's sail"}]}


@pytest.fixture(scope="module")
def zoo():
    return ModelZoo(dataclasses.replace(PRESETS["tiny"], device="cpu"))


def test_model_names_and_file_types():
    assert MODELS == {"text-to-image": "png", "text-to-video": "mp4", "text-to-audio": "wav"}


@pytest.mark.parametrize("wrap", ["{}", "Sure! {}", "```json\n{}\n```", "{} Anything else?"])
def test_our_json_format_is_read_back(wrap):
    meta = parse_meta_response(wrap.format(json.dumps(META, ensure_ascii=False)))
    assert meta.response == META["response"] and meta.problems == []
    assert [(i.model, i.prompt) for i in meta.invocations] == [(d["model"], d["prompt"]) for d in META["invocations"]]


def test_plain_text_unknown_models_and_garbage():
    plain = parse_meta_response("  Hello there, nothing to draw.  ")
    assert (plain.response, plain.invocations, plain.problems) == ("Hello there, nothing to draw.", [], [])
    bad = parse_meta_response(json.dumps({"response": "ok", "invocations": [
        {"model": "text-to-smell", "prompt": "roses"}, {"model": "text-to-image", "prompt": "a rose"}]}))
    assert [i.model for i in bad.invocations] == ["text-to-image"] and len(bad.problems) == 1
    assert "text-to-smell" in bad.problems[0]  # evaluate.py's "parse" score counts reported problems
    for text in ['{"response": "cut', "", "{{{", '{"invocations": 3}', "\x00\ud800"]:
        meta = parse_meta_response(text)
        assert isinstance(meta.response, str) and isinstance(meta.invocations, list)
    assert parse_meta_response('{"response": "cut').problems  # truncated JSON is reported, not silently dropped


def test_generate_writes_files_that_load_and_a_record_of_them(zoo, tmp_path):
    written = generate(json.dumps(META), str(tmp_path), zoo)
    names = ["00-text-to-image.png", "01-text-to-video.mp4", "02-text-to-audio.wav"]
    assert [w["file"] for w in written] == names
    record = json.loads((tmp_path / "generated.json").read_text(encoding="utf-8"))
    assert record["response"] == META["response"] and record["problems"] == []
    assert [(o["file"], o["model"], o["prompt"]) for o in record["outputs"]] == [
        (n, d["model"], d["prompt"]) for n, d in zip(names, META["invocations"])]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names + ["generated.json"])
    img = Image.open(tmp_path / names[0])
    assert img.mode == "RGB" and min(img.size) > 0
    frames = iio.imread(tmp_path / names[1])  # (F, H, W, 3)
    assert frames.ndim == 4 and frames.shape[0] > 1 and frames.shape[-1] == 3
    audio, rate = sf.read(tmp_path / names[2], dtype="float32")
    assert rate > 0 and len(audio) > 0 and np.isfinite(audio).all()


def test_generate_takes_a_parsed_meta_response_and_writes_a_record_without_invocations(zoo, tmp_path):
    meta = parse_meta_response(json.dumps({"response": "One picture.", "invocations": [META["invocations"][0]]}))
    assert [w["file"] for w in generate(meta, str(tmp_path / "one"), zoo)] == ["00-text-to-image.png"]
    assert generate(MetaResponse("Just text."), str(tmp_path / "none"), zoo) == []
    record = json.loads((tmp_path / "none" / "generated.json").read_text(encoding="utf-8"))
    assert (record["response"], record["outputs"]) == ("Just text.", [])
