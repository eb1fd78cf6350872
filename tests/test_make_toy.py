"""Tests for data/make_toy.py: determinism, held-out combinations and wordings, readable media, valid targets,
`needs`.

Run: python -m pytest -q tests/test_make_toy.py   (CPU, ~15 s: builds the small preset three times)
"""
import ast
import hashlib
import json
import re
import sys
import wave
from pathlib import Path

import av
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "data" / "make_toy.py"
sys.path.insert(0, str(ROOT / "data"))  # the data/ tools import their siblings (records, toy_media, toy_words)
import make_toy  # noqa: E402
import toy_media  # noqa: E402  (the attribute vocabularies: COLOURS, PITCHES, ...)
import toy_words  # noqa: E402  (the wordings: TRAIN_WORDS, HELD_OUT_WORDS, FOOD, INSTRUMENT, ...)

SPLITS = ("train", "val", "test")
MODELS = {"text-to-image", "text-to-video", "text-to-audio"}  # spelled as in SPEC / generate.py


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def load(folder: Path) -> tuple[dict[str, list[dict]], dict[str, dict]]:
    records = {s: [json.loads(line) for line in (folder / f"{s}.jsonl").open()] for s in SPLITS}
    media = {m["path"]: m for m in map(json.loads, (folder / "media.jsonl").open())}
    return records, media


def load_wordings(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "test_wordings.jsonl").open()]


def requested_models(instruction: str) -> set[str]:
    """The output models whose request phrasings (training or held-out) the instruction uses."""
    frames = {m: toy_words.TRAIN_WORDS[m] + toy_words.HELD_OUT_WORDS[m] for m in MODELS}
    return {m for m, fs in frames.items()
            if any(re.search(re.escape(f).replace(re.escape("{x}"), ".+"), instruction) for f in fs)}


def has_word(word: str, text: str) -> bool:
    return re.search(rf"\b{re.escape(word)}\b", text) is not None


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("toy0")
    make_toy.build(str(out), seed=0, preset="small")
    return out


def test_same_seed_same_bytes_other_seed_differs(toy, tmp_path):
    make_toy.build(str(tmp_path / "again"), seed=0, preset="small")
    make_toy.build(str(tmp_path / "seed1"), seed=1, preset="small")
    first, again, other = digests(toy), digests(tmp_path / "again"), digests(tmp_path / "seed1")
    assert len(first) > 100 and first == again
    assert first.keys() == other.keys()  # same layout ...
    for name in ("train.jsonl", "images/i0000.png", "audio/a0000.wav", "videos/v0000.mp4"):
        assert first[name] != other[name], name  # ... different content


def replay_said(instruction: str) -> str:
    """The waveform or rhythm that a replay's instruction asks for ("... played on a violin", "... in two beeps")."""
    for instrument, waveform in toy_words.WAVEFORM_OF.items():
        if f"played on {toy_media.a(instrument)}" in instruction:
            return waveform
    return next(r for r, words in toy_media.RHYTHMS.items() if words in instruction)


def held_out_combos(record: dict, media: dict) -> list[tuple]:
    """Recomputed from the media attributes, the instruction and the target, independently of the record's
    "combos" key."""
    attrs = [media[m["path"]]["attributes"] | {"modality": m["modality"]} for m in record["media"]]
    visual = [x for x in attrs if x["modality"] in ("image", "video")]
    audio = [x for x in attrs if x["modality"] == "audio"]
    found = [("colour+waveform", v["colour"], au["waveform"]) for v in visual for au in audio]
    for inv in record["target"]["invocations"]:
        words = inv["prompt"].split()
        if inv["model"] != "text-to-audio":
            if visual and not audio:  # the thing was said
                found += [("colour+thing", v["colour"], t) for v in visual for t in toy_words.THINGS if t in words]
            if not visual:  # the colour was said
                found += [("said-colour+waveform", c, au["waveform"]) for c in toy_media.COLOURS if c in words
                          for au in audio]
        elif len(attrs) == 1:  # a replay
            found.append(("pitch+said", attrs[0]["pitch"], replay_said(record["instruction"])))
    return [c for c in found if c[1:] in make_toy.HELD_OUT[c[0]]]


def test_held_out_combinations_only_in_val_and_test(toy):
    records, media = load(toy)
    assert all(not held_out_combos(r, media) for r in records["train"])
    for split in ("val", "test"):
        assert records[split] and all(held_out_combos(r, media) for r in records[split]), split
    for split, recs in records.items():  # each split draws on its own media files (new renderings)
        assert all(media[m["path"]]["split"] == split for r in recs for m in r["media"])
    # and the generator's own check refuses a train record with a held-out pairing
    bad = dict(records["train"][0], combos=[["colour+waveform", "red", "sine"]])
    with pytest.raises(ValueError, match="held-out"):
        make_toy.check({"train": [bad]}, list(media.values()))


def test_kinds_and_modality_combinations(toy):
    records, _ = load(toy)
    for split in ("train", "test"):
        assert {r["kind"] for r in records[split]} == {"input", "output", "reasoning"}, split
    combos = {tuple(sorted(m["modality"] for m in r["media"])) for r in records["train"]}
    assert {("image",), ("audio",), ("video",), ("audio", "image"), ("audio", "video"), ("image", "video")} <= combos
    models = {i["model"] for r in records["test"] for i in r["target"]["invocations"]}
    assert models == MODELS


def test_every_media_file_exists_and_reads_back(toy):
    records, media = load(toy)
    used = {m["path"]: m["modality"] for recs in records.values() for r in recs for m in r["media"]}
    assert set(used) <= set(media) and all(media[p]["modality"] == mod for p, mod in used.items())
    for path, row in media.items():
        assert row["caption"] and row["attributes"], path
        f = toy / path
        if row["modality"] == "image":
            with Image.open(f) as im:
                assert (im.format, im.size, im.mode) == ("PNG", (224, 224), "RGB"), path
        elif row["modality"] == "audio":
            with wave.open(str(f)) as w:
                assert (w.getframerate(), w.getnchannels(), w.getnframes()) == (16000, 1, 32000), path
        else:
            with av.open(str(f)) as c:
                frames = [fr for fr in c.decode(video=0)]
            assert len(frames) == 20 and (frames[0].width, frames[0].height) == (224, 224), path


def test_targets_are_valid_meta_responses(toy):
    records, media = load(toy)
    records["wordings"] = load_wordings(toy)
    for r in (r for recs in records.values() for r in recs):
        assert set(r) >= {"id", "kind", "instruction", "media", "target"} and r["instruction"].strip()
        target = r["target"]
        assert set(target) == {"response", "invocations"} and target["response"].strip(), r["id"]
        assert json.loads(json.dumps(target)) == target
        assert len(target["invocations"]) == (r["kind"] == "output"), r["id"]
        for inv in target["invocations"]:
            assert set(inv) == {"model", "prompt"} and inv["model"] in MODELS and inv["prompt"].strip(), r["id"]
        # the instruction's wording names exactly the invoked model (paper Sec. 3.2 output-side alignment);
        # a refusal ("Don't film anything. Draw a red kite.") does not count as a request
        assert requested_models(r["instruction"]) == {i["model"] for i in target["invocations"]}, r["id"]
        # answerable: colours and sounds in the target are those of the media (when the instruction asks for them)
        for m in r["media"]:
            at, text = media[m["path"]]["attributes"], json.dumps(target).lower()
            if m["modality"] != "audio" and r["kind"] == "input":
                assert at["colour"] in text, r["id"]
            if m["modality"] == "audio" and r["kind"] == "input":
                assert media[m["path"]]["caption"] in text, r["id"]
            # an output that reads a medium says what it read before invoking (data/README.md, "Templates")
            said, family = target["response"].lower(), r.get("family")
            if family == "replay_sound":
                assert said.startswith(f"the audio is {media[m['path']]['caption']}."), r["id"]
            if family in ("paint_instrument", "colour_instrument") and m["modality"] == "audio":
                w = at["waveform"]
                assert said.startswith(f"{toy_media.a(toy_words.INSTRUMENT[w])}, because the audio is "
                                       f"{toy_media.a(w)} tone"), r["id"]
            if family == "colour_instrument" and m["modality"] != "audio":
                assert f", and the {m['modality']} is {at['colour']}. here is the " in said, r["id"]
    assert len({r["id"] for recs in records.values() for r in recs}) == sum(map(len, records.values()))


def test_no_stage_imports():  # --help: test_check_order.test_every_script_help_lists_every_flag_with_help_text
    imported = {a.name.split(".")[0] for n in ast.walk(ast.parse(SCRIPT.read_text()))
                if isinstance(n, (ast.Import, ast.ImportFrom)) for a in getattr(n, "names", [])}
    imported |= {n.module.split(".")[0] for n in ast.walk(ast.parse(SCRIPT.read_text()))
                 if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"encode", "lora", "project", "agent", "generate", "train", "evaluate", "bench"}


def test_needs_name_what_the_prompt_is_built_from(toy):
    """Each needed attribute's value word is in the prompt and not in the instruction (so changing it changes the
    prompt); every attribute word of the prompt is a needed one or said in the instruction."""
    records, media = load(toy)
    spoken = {"waveform": toy_words.INSTRUMENT, "rhythm": toy_media.RHYTHMS}  # how a prompt says the value
    vocabulary = [*toy_media.COLOURS, *toy_media.DIRECTIONS, *toy_media.PITCHES, *toy_media.WAVEFORMS,
                  *toy_media.RHYTHMS.values(), *toy_words.INSTRUMENT.values()]
    for r in (r for recs in [*records.values(), load_wordings(toy)] for r in recs):
        if not r["target"]["invocations"]:
            assert r["needs"] == [], r["id"]
            continue
        inv, instruction = r["target"]["invocations"][0], r["instruction"]
        needed = []
        for i, key in r["needs"]:
            value = media[r["media"][i]["path"]]["attributes"][key]
            if key == "rhythm" or (key == "waveform" and inv["model"] != "text-to-audio"):
                value = spoken[key][value]
            assert has_word(value, inv["prompt"]) and not has_word(value, instruction), (r["id"], key, value)
            needed.append(value)
        for word in (w for w in vocabulary if has_word(w, inv["prompt"])):
            from_words = has_word(word, instruction) or has_word(toy_words.INSTRUMENT.get(word, word), instruction)
            assert from_words or any(has_word(word, v) for v in needed), (r["id"], word)
    by_family = {r["family"]: r["needs"] for r in records["train"] if r["target"]["invocations"]}
    assert by_family["paint_thing"] == [[0, "colour"]] and by_family["paint_instrument"] == [[0, "waveform"]]
    assert by_family["colour_instrument"] == [[0, "waveform"], [1, "colour"]] and by_family["text_request"] == []
    replay = {tuple(map(tuple, r["needs"])) for r in records["train"] if r["family"] == "replay_sound"}
    assert replay == {((0, "pitch"), (0, "waveform")), ((0, "pitch"), (0, "rhythm"))}


def test_training_wordings_teach_intent(toy):
    """Paraphrased and indirect requests, text-only requests, refusals and text-only questions are in train."""
    records, _ = load(toy)
    train = records["train"]
    for model in MODELS:
        asked = [r for r in train if [i["model"] for i in r["target"]["invocations"]] == [model]]
        frames = {f for f in toy_words.TRAIN_WORDS[model] for r in asked
                  if re.search(re.escape(f).replace(re.escape("{x}"), ".+"), r["instruction"])}
        assert len(frames) >= 7, (model, frames)
        assert any(not r["media"] for r in asked), model  # text-only requests
    refusals = [r for r in train if r["family"] == "negation"]
    assert refusals and all(r["media"] and not r["target"]["invocations"] for r in refusals)
    assert all(re.search(r"\b(Don't|Do not|don't|instead of)\b", r["instruction"]) for r in refusals)
    redirects = [r for r in train if r["instruction"].startswith(("Don't", "Do not")) and r["target"]["invocations"]]
    assert redirects  # "Don't film anything. Draw a red kite." -> text-to-image
    questions = [r for r in train if r["family"] == "question"]
    answers = {f"{c.capitalize()}." for c in toy_media.COLOURS} | {
        f"{toy_media.a(x).capitalize()}." for x in [*toy_words.FOOD.values(), *toy_words.INSTRUMENT.values()]} | {
        f"{toy_media.a(w).capitalize()} tone." for w in toy_media.WAVEFORMS}
    assert questions and all(not r["media"] and not r["target"]["invocations"] for r in questions)
    assert {r["target"]["response"] for r in questions} <= answers
    facts = [*toy_words.FOOD.items(), *((f"{w} tone", i) for w, i in toy_words.INSTRUMENT.items())]
    for r in questions:  # "What colour is a banana?" -> "Yellow."; "Which instrument plays a sine tone?" -> "A flute."
        asked, answer = r["instruction"].lower(), r["target"]["response"].lower()
        assert any(has_word(x, asked) and has_word(y, answer) or has_word(y, asked) and has_word(x, answer)
                   for x, y in facts), r["id"]
    for split in ("val", "test"):  # new families hold no held-out combination: train only
        assert not {r["family"] for r in records[split]} & {"text_request", "negation", "question"}, split


def test_held_out_wordings(toy):
    records, media = load(toy)
    wordings = load_wordings(toy)
    assert 90 <= len(wordings) <= 120 and len({r["id"] for r in wordings}) == len(wordings)
    intents = {i: sum(r["intent"] == i for r in wordings) for i in make_toy.WORDING_TESTS}
    assert intents == make_toy.WORDING_TESTS and all(n >= 15 for n in intents.values())
    for r in wordings:
        assert r["id"].startswith("toy-wordings-") and r["split"] == "test" and r["wording"] == "held_out"
        assert all(media[m["path"]]["split"] == "test" for m in r["media"]), r["id"]
        models = [i["model"] for i in r["target"]["invocations"]]
        if r["intent"].startswith("request-"):
            assert models == ["text-to-" + r["intent"].split("-")[1]], r["id"]
        else:
            assert models == [] and r["target"]["response"], r["id"]
            assert bool(r["media"]) == (r["intent"] == "negation"), r["id"]
    assert any(not r["media"] for r in wordings if r["intent"] == "request-image")  # text-only requests too
    assert any(r["media"] for r in wordings if r["intent"] == "request-audio")
    # held out by construction: the two phrase tables share nothing, no train/val instruction holds a piece of a
    # held-out phrasing, and every wording-test instruction holds one
    flat = lambda words: {t for v in words.values() for t in (sum(v.values(), ()) if isinstance(v, dict) else v)}
    assert not flat(toy_words.TRAIN_WORDS) & flat(toy_words.HELD_OUT_WORDS)
    pieces = toy_words.held_out_pieces()
    assert {"let me hear", "could you whip up an illustration of", "skip the", "i'd love to see some footage of",
            "just tell me what it is"} <= pieces
    for r in records["train"] + records["val"]:
        assert not [p for p in pieces if p in r["instruction"].lower()], r["id"]
    assert all(any(p in r["instruction"].lower() for p in pieces) for r in wordings)
    assert any(r["instruction"].startswith("No ") for r in wordings)
    # and the generator's own check refuses a train record that uses a held-out phrasing
    bad = dict(records["train"][0], instruction="Let me hear a high sine tone held steady.")
    with pytest.raises(ValueError, match="held-out wording"):
        make_toy.check({"train": [bad]}, list(media.values()))


def test_multi_turn_records_appended_apart_and_grounded(toy):
    """A few two-turn records after train's single-turn ones (which stay what make_records writes), and
    test_multiturn.jsonl on test media; each follow-up is about the first turn's media item."""
    records, media = load(toy)
    cfg = make_toy.PRESETS["small"]
    single = make_toy.make_records(list(media.values()), cfg, 0)["train"]
    n, k = len(single), cfg.multiturn[0]
    assert records["train"][:n] == single and len(records["train"]) == n + k and 0 < k <= 0.05 * n
    tests = [json.loads(line) for line in (toy / "test_multiturn.jsonl").open()]
    assert len(tests) == cfg.multiturn[1] and not {r["id"] for r in tests} & {r["id"] for r in records["test"]}
    for split, recs in (("train", records["train"][n:]), ("test", tests)):
        for r in recs:
            assert r["family"].startswith("followup_") and r["split"] == split and len(r["turns"]) == 1, r["id"]
            first, item = r["turns"][0], media[r["media"][0]["path"]]
            assert first["n_media"] == 1 and first["target"]["response"] == toy_words.describe(item), r["id"]
            assert all(media[m["path"]]["split"] == split for m in r["media"]), r["id"]
            if split == "train":
                assert not [c for c in r["combos"] if make_toy.is_held_out(c)], r["id"]
            for i, key in r["needs"]:  # the prompt holds the needed attribute of the right item
                value = media[r["media"][i]["path"]]["attributes"][key]
                prompt = r["target"]["invocations"][0]["prompt"]
                assert value in prompt or toy_words.INSTRUMENT.get(value, "-") in prompt, r["id"]
    assert any(len(r["media"]) == 2 for r in records["train"][n:] + tests)  # a second item in the last turn
