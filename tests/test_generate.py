"""generate.py and its helpers: the meta-response parser of meta_response.py (every format, every reported problem,
garbage), the three tiny pipelines of zoo_tiny.py end to end (files read back with the right shape), file names the
LLM cannot steer, the zoo's cache, the CLIP tokenizer rebuilt offline, and the CLI."""
import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import pytest

import generate
import predictions
import zoo_tiny
from generate import PRESETS, ModelZoo
from meta_response import MAX_INVOCATIONS, MAX_PROMPT_CHARS, MODELS, Invocation, MetaResponse
from meta_response import parse_meta_response as parse

CAT = Invocation("text-to-image", "a photo of a cat")
KNOWN = "(known: text-to-image, text-to-video, text-to-audio)"
TINY = dataclasses.replace(PRESETS["tiny"], device="cpu")


def meta_json(response: str, *invocations) -> str:
    """What agent.format_meta_response writes: json.dumps of the target record."""
    return json.dumps({"response": response, "invocations": list(invocations)}, ensure_ascii=False)


# ----------------------------------------------------------------------------- parser
def test_json_round_trip():
    target = {"response": 'Voilà, a "cat".', "invocations": [
        {"model": "text-to-image", "prompt": "a photo of a cat"},
        {"model": "text-to-video", "prompt": "a cat running, 4k"},
        {"model": "text-to-audio", "prompt": "a cat meowing\nloudly"}]}
    assert parse(json.dumps(target, ensure_ascii=False)) == MetaResponse(
        'Voilà, a "cat".', [Invocation(**i) for i in target["invocations"]], [])
    assert parse(json.dumps(target)) == parse(json.dumps(target, ensure_ascii=False))  # \u escapes
    assert parse('{"response": "Hi!", "invocations": []}') == MetaResponse("Hi!", [], [])
    assert parse('{"response": "Hi!"}') == MetaResponse("Hi!", [], [])


def test_json_inside_fences_and_prose():
    body = meta_json("Here is a cat.", {"model": "text-to-image", "prompt": "a photo of a cat"})
    expected = MetaResponse("Here is a cat.", [CAT], [])
    assert parse(f"```json\n{body}\n```") == expected
    assert parse(f"Sure thing!\n```\n{body}\n```\nAnything else?") == expected
    assert parse(f"Sure thing! {body} Anything else?") == expected
    # no "response" key: the prose around the JSON is the reply
    assert parse('Here you go: {"invocations": [{"model": "text-to-image", "prompt": "a photo of a cat"}]}') == \
        MetaResponse("Here you go:", [CAT], [])
    # an unrelated JSON object first is skipped
    assert parse('Use {"a": 1}. ' + body) == expected


def test_tuple_form():
    assert parse('Sure! ("text-to-image", "A photo of a cat")') == \
        MetaResponse("Sure!", [Invocation("text-to-image", "A photo of a cat")], [])
    assert parse("""Here: ('text-to-audio', 'rain on a \\'tin\\' roof') and ( "text-to-video" , "a \\"dog\\"" ).""") == \
        MetaResponse("Here: and .", [Invocation("text-to-audio", "rain on a 'tin' roof"),
                                     Invocation("text-to-video", 'a "dog"')], [])
    assert parse('("text-to-3d", "a chair")') == MetaResponse("", [], [f"invocation 1: unknown model 'text-to-3d' {KNOWN}"])
    assert parse('OK ("text-to-image", "  ")') == MetaResponse("OK", [], ["invocation 1 (text-to-image) has an empty prompt"])


def test_flag_form_of_the_official_code():
    assert parse("Modality: [IMAGE] Prompt: a photo of a cat ###") == MetaResponse("", [CAT], [])
    assert parse("[TEXT] Prompt: Hello there! ###") == MetaResponse("Hello there!", [], [])
    # several flags share the prompt after them (the official parser's behaviour); segments end at ### or a flag
    assert parse("Sure. [IMAGE] [AUDIO] Prompt: a dog barking ### [VIDEO] Prompt: waves\n[TEXT] Prompt: Enjoy") == \
        MetaResponse("Sure. Enjoy", [Invocation("text-to-image", "a dog barking"),
                                     Invocation("text-to-audio", "a dog barking"), Invocation("text-to-video", "waves")], [])
    assert parse("Modality: [VIDEO] Prompt: ###") == MetaResponse("", [], ["invocation 1 (text-to-video) has an empty prompt"])


def test_plain_text_is_the_reply():
    for text in ["Hello! How can I help?", "", "   ", "use {braces}, [brackets] and (parens)", "{{{", "[IMAGE",
                 'He said ("hello", "world").', '{"a": 1} is JSON']:
        assert parse(text) == MetaResponse(text.strip(), [], [])


def test_reported_problems():
    inv = lambda **kw: kw  # noqa: E731
    cases = [
        ([inv(model="text-to-3d", prompt="a chair"), inv(model="text-to-image", prompt="a photo of a cat")],
         [CAT], [f"invocation 1: unknown model 'text-to-3d' {KNOWN}"]),
        ([inv(prompt="a cat")], [], ["invocation 1 has no model"]),
        ([inv(model=["text-to-image"], prompt="a cat")], [], [f"invocation 1: unknown model ['text-to-image'] {KNOWN}"]),
        ([inv(model="text-to-image")], [], ["invocation 1 (text-to-image) has no prompt"]),
        ([inv(model="text-to-image", prompt=" \n")], [], ["invocation 1 (text-to-image) has an empty prompt"]),
        ([inv(model="text-to-image", prompt=42)], [], ["invocation 1 (text-to-image): prompt is not a string"]),
        ([inv(model="text-to-audio", prompt="la " * 400)], [],
         [f"invocation 1 (text-to-audio): prompt has 1199 characters, over the limit of {MAX_PROMPT_CHARS}"]),
        (["text-to-image", inv(model="text-to-image", prompt="a photo of a cat")], [CAT],
         ['invocation 1 is not an object with "model" and "prompt"']),
        ([inv(model="text-to-image", prompt=f"cat {i}") for i in range(10)],
         [Invocation("text-to-image", f"cat {i}") for i in range(MAX_INVOCATIONS)],
         [f"10 invocations; only the first {MAX_INVOCATIONS} are used"]),
    ]
    for items, invocations, problems in cases:
        assert parse(meta_json("Sure.", *items)) == MetaResponse("Sure.", invocations, problems)
    assert parse('{"response": "Sure.", "invocations": {"model": "text-to-image", "prompt": "a cat"}}') == \
        MetaResponse("Sure.", [], ['"invocations" must be a list, got dict'])
    assert parse('Hi. {"response": null, "invocations": []}') == \
        MetaResponse("Hi.", [], ['"response" is not a string; using the text around the JSON'])


def test_truncated_and_invalid_json():
    text = '{"response": "Sure, here is a cat.", "invocations": [{"model": "text-to-image", "prompt": "a cat'
    pos = text.index('"a cat')
    assert parse(text) == MetaResponse("Sure, here is a cat.", [], [
        f"truncated JSON meta-response (Unterminated string starting at: character {pos}); "
        "no invocations run, using the text reply"])
    assert parse('{"response": "Hi", "invocations": [}') == MetaResponse("Hi", [], [
        "invalid JSON meta-response (Expecting value: character 35); no invocations run, using the text reply"])
    # every proper prefix of a meta-response that names a key is reported as truncated, none runs anything
    full = meta_json('Sure, a "cat" \\o/', {"model": "text-to-image", "prompt": "a cat"},
                     {"model": "text-to-audio", "prompt": "meow"})
    for cut in range(len('{"response"'), len(full)):
        r = parse(full[:cut])
        assert r.invocations == [] and len(r.problems) == 1, full[:cut]
        assert r.problems[0].startswith("truncated JSON meta-response ("), full[:cut]


def test_parser_never_crashes_on_garbage():
    rng = random.Random(0)
    atoms = ['{', '}', '[', ']', '"', "'", '\\', ':', ',', '(', ')', '###', ' ', '\n', 'a', 'é', '\ud800', '\x00',
             '"response"', '"invocations"', '"model"', '"prompt"', '"text-to-image"', 'text-to-video', '[IMAGE]',
             '[TEXT]', 'Prompt:', 'Modality:', '```json', '../../x', '1e999', 'null']
    texts = ["".join(rng.choice(atoms) for _ in range(rng.randint(0, 60))) for _ in range(2000)]
    texts += ["{" * 10000, '{"response": ' + "[" * 100000, '{"response": "x", "invocations": [' + "{" * 5000,
              "[IMAGE] Prompt: " + "x" * 100000, '("text-to-image", "' + "\\" * 9999 + '")']
    for text in texts:
        r = parse(text)
        assert isinstance(r.response, str) and all(isinstance(p, str) for p in r.problems)
        r.response.encode("utf-8")  # no lone surrogates left to break tokenizers or the JSON record
        for i in r.invocations:
            assert i.model in MODELS and i.prompt == i.prompt.strip() and 0 < len(i.prompt) <= MAX_PROMPT_CHARS


# ----------------------------------------------------------------------------- tiny model zoo
@pytest.fixture(scope="module")
def zoo():
    return ModelZoo(TINY)


def read_record(out: Path) -> dict:
    record = json.loads((out / "generated.json").read_text(encoding="utf-8"))
    for o in record["outputs"]:
        assert o.pop("seconds") >= 0
    return record


def test_tiny_text_to_image_writes_png(zoo, tmp_path):
    from PIL import Image

    written = generate.generate(meta_json("Here is a cat.", dataclasses.asdict(CAT)), tmp_path, zoo)
    png = Image.open(tmp_path / "00-text-to-image.png")
    assert (png.size, png.mode) == ((32, 32), "RGB")
    # lossless and reproducible: the file holds exactly what the seeded pipeline returns
    np.testing.assert_array_equal(np.asarray(png), generate._to_uint8(zoo("text-to-image", CAT.prompt, seed=0)))
    expected = {"file": "00-text-to-image.png", "model": "text-to-image", "prompt": "a photo of a cat",
                "checkpoint": "tiny", "seed": 0, "num_inference_steps": 2, "guidance_scale": 7.5,
                "height": 32, "width": 32, "scheduler": "DDIMScheduler"}
    assert read_record(tmp_path) == {"response": "Here is a cat.", "problems": [], "outputs": [expected]}
    assert [{k: v for k, v in w.items() if k != "seconds"} for w in written] == [expected]


def test_tiny_text_to_video_writes_mp4(zoo, tmp_path):
    import av

    generate.generate("Modality: [VIDEO] Prompt: a dog running ###", tmp_path, zoo)
    with av.open(str(tmp_path / "00-text-to-video.mp4")) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        assert (stream.codec_context.name, stream.average_rate) == ("h264", 8)
    assert [f.shape for f in frames] == [(32, 32, 3)] * 4
    assert read_record(tmp_path)["outputs"] == [{
        "file": "00-text-to-video.mp4", "model": "text-to-video", "prompt": "a dog running", "checkpoint": "tiny",
        "seed": 0, "num_inference_steps": 2, "guidance_scale": 9.0, "height": 32, "width": 32, "num_frames": 4,
        "frames": 4, "fps": 8, "scheduler": "DDIMScheduler"}]  # the tiny pipeline keeps DDIM (paper zoo: DPM-Solver++)


def test_tiny_text_to_audio_writes_wav(zoo, tmp_path):
    import soundfile

    generate.generate('Listen: ("text-to-audio", "rain on a roof")', tmp_path, zoo)
    audio, rate = soundfile.read(tmp_path / "00-text-to-audio.wav", dtype="float32")
    assert (audio.shape, rate, soundfile.info(tmp_path / "00-text-to-audio.wav").subtype) == ((1024,), 16000, "PCM_16")
    expected = np.clip(zoo("text-to-audio", "rain on a roof", seed=0), -1, 1)
    assert np.abs(audio - expected).max() <= 2 / 32768  # 16-bit quantisation only
    record = read_record(tmp_path)
    assert record["response"] == "Listen:" and record["outputs"][0]["samples"] == 1024 == 0.064 * 16000
    # random tiny weights give a near-silent waveform, so check the writer on a loud one too
    sine = (0.8 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)).astype(np.float32)
    assert generate._write(tmp_path / "sine.wav", "text-to-audio", sine, zoo) == {"samples": 16000, "sample_rate": 16000}
    assert np.abs(soundfile.read(tmp_path / "sine.wav", dtype="float32")[0] - sine).max() <= 1 / 32768


def test_llm_text_cannot_choose_where_files_go(zoo, tmp_path):
    out = tmp_path / "a" / "b" / "out"
    text = meta_json("../../x", {"model": "text-to-image", "prompt": "../../x"},
                     {"model": "../../x", "prompt": "/etc/passwd"}, {"model": "text-to-image/../../x", "prompt": "x"})
    generate.generate(text, out, zoo)
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["a/b/out/00-text-to-image.png", "a/b/out/generated.json"]
    record = read_record(out)
    assert record["outputs"][0]["prompt"] == "../../x"
    assert record["problems"] == [f"invocation 2: unknown model '../../x' {KNOWN}",
                                  f"invocation 3: unknown model 'text-to-image/../../x' {KNOWN}"]
    with pytest.raises(ValueError, match="unknown model '../x'"):  # hand-built invocations are checked too
        generate.generate(MetaResponse("", [Invocation("../x", "a cat")]), out, zoo)


def test_zoo_builds_each_pipeline_once(monkeypatch, tmp_path):
    import soundfile

    builds = []
    real = zoo_tiny.tiny_pipeline
    monkeypatch.setattr(zoo_tiny, "tiny_pipeline", lambda model: builds.append(model) or real(model))
    zoo = ModelZoo(TINY)
    assert builds == []  # lazy: nothing is built before it is needed
    assert zoo.pipeline("text-to-audio") is zoo.pipeline("text-to-audio")
    written = generate.generate(meta_json("", {"model": "text-to-audio", "prompt": "rain"},
                                          {"model": "text-to-audio", "prompt": "rain"}), tmp_path, zoo)
    assert builds == ["text-to-audio"]
    assert [(w["file"], w["seed"]) for w in written] == [("00-text-to-audio.wav", 0), ("01-text-to-audio.wav", 1)]
    a, b = (soundfile.read(tmp_path / w["file"])[0] for w in written)
    assert not np.array_equal(a, b)  # invocation i uses seed + i


def test_clip_tokenizer_rebuilt_offline_matches_clip_ids():
    tok = zoo_tiny.clip_tokenizer()
    assert len(tok) == 49408 and tok.model_max_length == 77
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


# ----------------------------------------------------------------------------- CLI
def test_cli_dry_run(capsys):  # --help: test_check_order.test_every_script_help_lists_every_flag_with_help_text
    generate.main(['Sure. ("text-to-image", "a cat") ("text-to-3d", "a chair")', "--dry-run"])
    assert capsys.readouterr().out == ("reply: Sure.\n"
                                       f"problem: invocation 2: unknown model 'text-to-3d' {KNOWN}\n"
                                       "invocation: text-to-image: a cat\n")


def test_cli_tiny_run_and_load_failure(tmp_path, capsys):
    generate.main(["[AUDIO] Prompt: a bell ###", "--out", str(tmp_path / "o"), "--zoo", "tiny", "--device", "cpu",
                   "--audio-seconds", "0.032"])
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"wrote {tmp_path / 'o' / '00-text-to-audio.wav'} (")
    assert read_record(tmp_path / "o")["outputs"][0]["samples"] == 512
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as e:  # the paper zoo without weights: a clear message, no traceback
        generate.main(["[IMAGE] Prompt: a cat ###", "--out", str(tmp_path / "p"), "--device", "cpu",
                       "--text-to-image", str(tmp_path / "empty")])
    assert "cannot load text-to-image from" in str(e.value.code) and "pass --zoo tiny" in str(e.value.code)
    generate.main(["Just text, nothing to generate.", "--out", str(tmp_path / "t")])  # loads no model at all
    assert read_record(tmp_path / "t") == {"response": "Just text, nothing to generate.", "problems": [], "outputs": []}


def test_cli_renders_a_predictions_file(tmp_path, capsys):
    """--predictions: one folder per record id (sanitised), only records that invoke a model, --limit of them."""
    rows = [{"id": "t-0", "prediction": "Only text."},
            {"id": "../t-1", "prediction": '{"response": "Here.", "invocations": [{"model": "text-to-audio", '
                                           '"prompt": "a bell"}]}'},
            {"id": "t-2", "prediction": "[AUDIO] Prompt: a drum ###"}]
    preds = tmp_path / "p.jsonl"
    preds.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "o"
    generate.main(["--predictions", str(preds), "--limit", "1", "--out", str(out), "--zoo", "tiny",
                   "--device", "cpu", "--audio-seconds", "0.032"])
    folder = predictions.record_folder("../t-1", set())
    assert folder.startswith("_t-1-")  # sanitised, plus a hash of the exact id because sanitising changed it
    assert sorted(p.relative_to(tmp_path).as_posix() for p in out.rglob("*") if p.is_file()) == [
        f"o/{folder}/00-text-to-audio.wav", f"o/{folder}/generated.json"]
    assert read_record(out / folder)["outputs"][0]["prompt"] == "a bell"
    with pytest.raises(SystemExit):
        generate.main(["some text", "--predictions", str(preds)])
