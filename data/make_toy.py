"""Build the toy ModaVerse data set: synthetic media + instruction -> meta-response records.

Not a stage of Eq. (1) itself: it makes the (instruction, media) -> meta-response pairs that train the
projector P and the LoRA of the LLM (paper Sec. 3.2: input-side, output-side and reasoning instructions),
offline and on a CPU. Every media item is a PNG, WAV or MP4 described by a few attributes that a *random*
ImageBind still carries (colour; audio pitch, waveform, rhythm: see data/README.md), and some attribute
combinations are kept out of training so that the test split measures generalisation. A second test file,
test_wordings.jsonl, asks in phrasings that no training template uses (requests, refusals, text-only questions);
a third, test_multiturn.jsonl, holds two-turn conversations like the few appended to train (data/README.md §4).

Run (same seed -> byte-identical files):
    python data/make_toy.py --out data/toy --seed 0                 # full: 3660 records + 140, 428 media files
    python data/make_toy.py --out /tmp/toy --seed 0 --preset small  # tests / CI: a few seconds
The record format and the design are specified in data/README.md. The media files are written by
data/toy_media.py, the wordings are in data/toy_words.py; this file imports no stage.
"""
import argparse
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from records import write_jsonl
from toy_media import COLOURS, MEDIA, RHYTHMS, SPLITS, WAVEFORMS, a, make_media  # the files, from attributes
from toy_words import (FOOD, HELD_OUT_WORDS, INSTRUMENT, NOUNS, REFUSAL, RESPONSE, THINGS, TRAIN_WORDS,  # the words
                       WAVEFORM_OF, ask_visual, choice, describe, describe_visual, held_out_pieces, instrument_of, tone)

# ----------------------------------------------------------------------------- config

@dataclass(frozen=True)
class ToyConfig:
    images: tuple[int, int, int]   # media files per split (train, val, test)
    audios: tuple[int, int, int]
    videos: tuple[int, int, int]
    records: tuple[int, int, int]  # instruction records per split
    multiturn: tuple[int, int] = (0, 0)  # two-turn records appended to train, and in test_multiturn.jsonl


PRESETS = {
    "small": ToyConfig(images=(16, 8, 8), audios=(30, 15, 15), videos=(16, 8, 8), records=(400, 60, 60),
                       multiturn=(8, 12)),
    "full": ToyConfig(images=(72, 24, 24), audios=(90, 45, 45), videos=(64, 32, 32), records=(3000, 300, 300),
                      multiturn=(60, 40)),
}
FILES = {"wordings": "test_wordings", "multiturn": "test_multiturn"}  # the other test files, by their records' key
MODELS = ("text-to-image", "text-to-video", "text-to-audio")

# Combinations that never occur in train; every val/test record contains at least one (data/README.md).
HELD_OUT = {
    "colour+waveform": {("red", "sine"), ("yellow", "square"), ("green", "sawtooth"),
                        ("blue", "sine"), ("purple", "square"), ("brown", "sawtooth")},
    # a colour said in the instruction and an audio of this waveform (unlike colour+waveform's: all are in train)
    "said-colour+waveform": {("orange", "sine"), ("green", "sine"), ("pink", "square"), ("red", "square"),
                             ("blue", "sawtooth"), ("yellow", "sawtooth")},
    # a colour read from an image/video and a thing that the instruction says
    "colour+thing": {("red", "kite"), ("orange", "balloon"), ("yellow", "car"), ("green", "boat"), ("blue", "bird"),
                     ("purple", "ball"), ("pink", "hat"), ("brown", "fish")},
    # a replay: the heard pitch with the waveform or rhythm that the instruction says
    "pitch+said": {("very low", "sawtooth"), ("very low", "two beeps"), ("low", "sine"), ("low", "four beeps"),
                   ("medium", "square"), ("medium", "steady"), ("high", "sawtooth"), ("high", "four beeps"),
                   ("very high", "sine"), ("very high", "two beeps")},
}
WORDING_TESTS = {"request-image": 20, "request-video": 20, "request-audio": 20, "negation": 24, "text-question": 16}

# ----------------------------------------------------------------------------- instruction records
# A family returns (kind, instruction, media items, response, invocation or None, combos, needs) for media drawn
# from one split's pool. `combos` lists the attribute pairings of the record that HELD_OUT is checked against;
# `needs` the [media index, attribute] pairs that the invocation's prompt is built from (data/README.md §1).


def pair_combo(visual: dict, audio: dict) -> list:
    return ["colour+waveform", visual["attributes"]["colour"], audio["attributes"]["waveform"]]


def f_describe_one(rng, pick):
    item = pick(choice(rng, ["image", "video", "audio"]))
    noun = choice(rng, NOUNS[item["modality"]])
    instruction = choice(rng, [f"Describe the given {noun}.", f"What is in this {noun}?",
                              f"Tell me what the {noun} contains.", f"Give a short description of this {noun}."])
    return "input", instruction, [item], describe(item), None, [], []


def f_describe_pair(rng, pick):
    visual, audio = pick(choice(rng, ["image", "video"])), pick("audio")
    noun = choice(rng, NOUNS[visual["modality"]])
    parts = [describe_visual(visual), f"the audio is {tone(audio['attributes'])}"]
    media, first = [visual, audio], rng.random() < 0.7
    if not first:
        parts, media = parts[::-1], media[::-1]
    names = f"{noun} and the sound" if first else f"sound and the {noun}"
    instruction = choice(rng, [f"Describe the given {names}.", f"What do the {names} contain?",
                              f"Describe both the {names}."])
    response = f"{parts[0][0].upper()}{parts[0][1:]}, and {parts[1]}."
    return "input", instruction, media, response, None, [pair_combo(visual, audio)], []


def f_food(rng, pick):
    item = pick(choice(rng, ["image", "video"]))
    noun, colour = choice(rng, NOUNS[item["modality"]]), item["attributes"]["colour"]
    instruction = choice(rng, [f"What food has the same colour as this {noun}?",
                              f"Name a food with the colour of this {noun}."])
    response = f"{a(FOOD[colour]).capitalize()}, because the {item['modality']} is {colour}."
    return "reasoning", instruction, [item], response, None, [], []


def f_instrument(rng, pick):
    item = pick("audio")
    instruction = choice(rng, ["Which instrument could make this sound?", "What instrument might be playing here?"])
    return "reasoning", instruction, [item], instrument_of(item), None, [], []


def f_beeps(rng, pick):
    item = pick("audio")
    instruction = choice(rng, ["How many beeps are in this sound?", "Count the beeps in the audio."])
    response = {"steady": "None, the tone is held steady.", "two beeps": "Two beeps.",
                "four beeps": "Four beeps."}[item["attributes"]["rhythm"]]
    return "reasoning", instruction, [item], response, None, [], []


def f_same_colour(rng, pick):
    image = pick("image")
    c1 = image["attributes"]["colour"]
    video = pick("video", colour=c1 if rng.random() < 0.4 else None)  # ~40% "yes"
    c2 = video["attributes"]["colour"]
    instruction = choice(rng, ["Do the picture and the video have the same colour?",
                              "Are the image and the clip the same colour?"])
    response = f"Yes, both are {c1}." if c1 == c2 else f"No, the image is {c1} and the video is {c2}."
    return "reasoning", instruction, [image, video], response, None, [], []


def f_food_and_instrument(rng, pick):
    visual, audio = pick(choice(rng, ["image", "video"])), pick("audio")
    colour, w = visual["attributes"]["colour"], audio["attributes"]["waveform"]
    noun = choice(rng, NOUNS[visual["modality"]])
    instruction = choice(rng, [
        f"Which food matches the colour of this {noun}, and which instrument could play this sound?",
        f"Name a food with the colour of the {noun} and an instrument for the sound."])
    response = (f"{a(FOOD[colour]).capitalize()} for the {colour} {visual['modality']}, "
                f"and {a(INSTRUMENT[w])} for the {w} tone.")
    return "reasoning", instruction, [visual, audio], response, None, [pair_combo(visual, audio)], []


# Families with a `words` argument take their phrasings from it (HELD_OUT_WORDS for test_wordings.jsonl).
def f_paint_thing(rng, pick, words=TRAIN_WORDS):
    """Colour from the media, object and direction from the instruction."""
    item, model = pick(choice(rng, ["image", "video"])), choice(rng, MODELS[:2])
    noun, thing = choice(rng, NOUNS[item["modality"]]), choice(rng, THINGS)
    x = choice(rng, [f"{a(thing)} in the colour of this {noun}", f"{a(thing)} the same colour as this {noun}"])
    instruction, inv = ask_visual(rng, words, model, x, item["attributes"]["colour"], thing)
    combo = ["colour+thing", item["attributes"]["colour"], thing]
    return "output", instruction, [item], RESPONSE[model], inv, [combo], [[0, "colour"]]


def f_paint_instrument(rng, pick, words=TRAIN_WORDS):
    """Paper: 'Generate an image of the animal that makes this sound'. Colour from the instruction."""
    item, model, colour = pick("audio"), choice(rng, MODELS[:2]), choice(rng, list(COLOURS))
    x = choice(rng, [f"the instrument that makes this sound, in {colour}",
                     f"the instrument playing this audio, coloured {colour}"])
    instruction, inv = ask_visual(rng, words, model, x, colour, INSTRUMENT[item["attributes"]["waveform"]])
    combo = ["said-colour+waveform", colour, item["attributes"]["waveform"]]
    return "output", instruction, [item], f"{instrument_of(item)} {RESPONSE[model]}", inv, [combo], [[0, "waveform"]]


def f_colour_instrument(rng, pick, words=TRAIN_WORDS):
    """Instrument from the audio, colour from the image/video: needs both media items."""
    visual, audio, model = pick(choice(rng, ["image", "video"])), pick("audio"), choice(rng, MODELS[:2])
    x = f"the instrument that makes this sound, in the colour of this {choice(rng, NOUNS[visual['modality']])}"
    instruction, inv = ask_visual(rng, words, model, x, visual["attributes"]["colour"],
                                  INSTRUMENT[audio["attributes"]["waveform"]])
    return ("output", instruction, [audio, visual], f"{instrument_of(audio, visual)} {RESPONSE[model]}", inv,
            [pair_combo(visual, audio)], [[0, "waveform"], [1, "colour"]])


def f_replay_sound(rng, pick, words=TRAIN_WORDS):
    """text-to-audio: keep pitch from the audio, change the rhythm or the instrument by instruction."""
    item, model = pick("audio"), "text-to-audio"
    if rng.random() < 0.5:
        rhythm = choice(rng, list(RHYTHMS))
        x, said = f"this tone again, {RHYTHMS[rhythm]}", {"rhythm": rhythm}
    else:
        instrument = choice(rng, list(WAVEFORM_OF))
        x, said = f"this tune again, played on {a(instrument)}", {"waveform": WAVEFORM_OF[instrument]}
    at = item["attributes"] | said
    needs = [[0, key] for key in at if key not in said]  # the audio's other two attributes
    inv = {"model": model, "prompt": tone(at)}
    combo = ["pitch+said", item["attributes"]["pitch"], *said.values()]  # said: one attribute
    response = f"{describe(item)} {RESPONSE[model]}"  # what was heard, then the prompt with one thing changed
    return "output", choice(rng, words[model]).format(x=x), [item], response, inv, [combo], needs


def f_text_request(rng, pick, words=TRAIN_WORDS):
    """No media: everything the prompt needs is in the words; in train, some first turn another model down."""
    model = choice(rng, MODELS)
    if model == "text-to-audio":
        at = {key: choice(rng, values) for key, values in MEDIA["audio"][2].items()}
        note = f"{a(at['pitch'])} note on {a(INSTRUMENT[at['waveform']])}, {RHYTHMS[at['rhythm']]}"
        x = choice(rng, [tone(at), note])
        instruction, inv = choice(rng, words[model]).format(x=x), {"model": model, "prompt": tone(at)}
    else:
        colour, thing = choice(rng, list(COLOURS)), choice(rng, THINGS)
        instruction, inv = ask_visual(rng, words, model, a(f"{colour} {thing}"), colour, thing)
    if "redirect" in words and rng.random() < 0.25:
        other = choice(rng, [m for m in MODELS if m != model])
        instruction = choice(rng, words["redirect"]).format(**REFUSAL[other]) + instruction
    return "output", instruction, [], RESPONSE[model], inv, [], []  # nothing read: any combination may be asked for


def f_negation(rng, pick, words=TRAIN_WORDS):
    """A generator is turned down: describe the media item (or say its colour), invoke nothing."""
    item = pick(choice(rng, ["image", "video", "audio"]))
    ask = "colour" if item["modality"] != "audio" and rng.random() < 0.4 else "describe"
    slots = REFUSAL[choice(rng, MODELS)] | {"noun": choice(rng, NOUNS[item["modality"]])}
    response = item["attributes"]["colour"].capitalize() + "." if ask == "colour" else describe(item)
    return "input", choice(rng, words[ask]).format(**slots), [item], response, None, [], []


def f_question(rng, pick, words=TRAIN_WORDS):
    """No media: the toy's world knowledge (colour <-> food, waveform <-> instrument) asked in words."""
    colour, w = choice(rng, list(COLOURS)), choice(rng, WAVEFORMS)
    slots = {"food": a(FOOD[colour]), "colour": colour, "tone": a(f"{w} tone"), "instrument": a(INSTRUMENT[w])}
    topic = choice(rng, list(words["question"]))  # the slot that answers
    instruction = choice(rng, words["question"][topic]).format(**slots)
    return "reasoning", instruction, [], slots[topic].capitalize() + ".", None, [], []


# family -> (weight in train, weight in val/test). Only families that can hold a held-out combo go to val/test.
FAMILIES = {f_describe_one: (0.10, 0), f_describe_pair: (0.07, 0.15), f_food: (0.05, 0), f_instrument: (0.04, 0),
            f_beeps: (0.04, 0), f_same_colour: (0.04, 0), f_food_and_instrument: (0.05, 0.15),
            f_paint_thing: (0.17, 0.25), f_paint_instrument: (0.07, 0.10), f_colour_instrument: (0.09, 0.15),
            f_replay_sound: (0.09, 0.20), f_text_request: (0.09, 0), f_negation: (0.06, 0), f_question: (0.04, 0)}
OUTPUT_FAMILIES = (f_paint_thing, f_paint_instrument, f_colour_instrument, f_replay_sound, f_text_request)


def is_held_out(combo: list) -> bool:
    return tuple(combo[1:]) in HELD_OUT[combo[0]]


def picker(media_rows: list[dict], split: str, rng: np.random.Generator):
    """pick(modality, colour=None): a random media item of this split's pool."""
    pool = [r for r in media_rows if r["split"] == split]

    def pick(modality, colour=None):
        cands = [r for r in pool if r["modality"] == modality and colour in (None, r["attributes"].get("colour"))]
        return cands[rng.integers(len(cands))]
    return pick


def record(rid: str, split: str, fam, made: tuple, **extra) -> dict:
    kind, instruction, items, response, inv, combos, needs = made
    return {"id": rid, "kind": kind, "instruction": instruction,
            "media": [{"modality": r["modality"], "path": r["path"]} for r in items],
            "target": {"response": response, "invocations": [inv] if inv else []},
            "split": split, "family": fam.__name__[2:], "combos": combos, "needs": needs, **extra}


def make_records(media_rows: list[dict], cfg: ToyConfig, seed: int) -> dict[str, list[dict]]:
    """Rejection-sample records per split: train never holds a HELD_OUT combo, val/test always do."""
    records = {}
    for s, (split, n) in enumerate(zip(SPLITS, cfg.records)):
        rng = np.random.default_rng([seed, 100 + s])
        pick = picker(media_rows, split, rng)
        fams = list(FAMILIES)
        weights = np.array([w[split != "train"] for w in FAMILIES.values()])
        out = []
        while len(out) < n:
            fam = fams[rng.choice(len(fams), p=weights / weights.sum())]
            # Resample within the family (not across families), so the family mix follows the weights.
            for _ in range(1000):
                made = fam(rng, pick)
                if any(map(is_held_out, made[5])) == (split != "train"):
                    break
            else:
                raise ValueError(f"{fam.__name__} made no {split} record in 1000 tries: "
                                 f"{'every' if split == 'train' else 'no'} record holds a HELD_OUT combination")
            out.append(record(f"toy-{split}-{len(out):05d}", split, fam, made))
        records[split] = out
    return records


def make_wordings(media_rows: list[dict], seed: int) -> list[dict]:
    """test_wordings.jsonl: HELD_OUT_WORDS phrasings on test media, WORDING_TESTS records per intent. Any attribute
    combination may occur: these records test the wording, not the held-out combinations."""
    rng = np.random.default_rng([seed, 200])
    pick, out = picker(media_rows, "test", rng), []
    for intent, n in WORDING_TESTS.items():
        fams = {"negation": [f_negation], "text-question": [f_question]}.get(intent, OUTPUT_FAMILIES)
        model = "text-to-" + intent[len("request-"):] if intent.startswith("request-") else None
        for _ in range(n):
            while True:  # an output family of the intent's model (every family can make it, or none is asked)
                fam = fams[rng.integers(len(fams))]
                made = fam(rng, pick, HELD_OUT_WORDS)
                if (made[4] or {}).get("model") == model:
                    break
            out.append(record(f"toy-wordings-{len(out):05d}", "test", fam, made, wording="held_out", intent=intent))
    return out


FOLLOW_UPS = (f_paint_thing, f_paint_instrument, f_colour_instrument, f_replay_sound, f_food, f_instrument, f_beeps)


def make_multiturn(media_rows: list[dict], split: str, n: int, seed: int) -> list[dict]:
    """Two-turn conversations (data/README.md §1 "turns"): a media item is described, then a follow-up family asks
    about it again (and may attach a second item). Their own RNG stream: the single-turn records stay the same.
    In train no held-out combination, as in make_records; test_multiturn.jsonl may hold any (it tests the turns)."""
    rng = np.random.default_rng([seed, 300 + SPLITS.index(split)])
    pick, out = picker(media_rows, split, rng), []
    while len(out) < n:
        first, fam = f_describe_one(rng, pick), FOLLOW_UPS[rng.integers(len(FOLLOW_UPS))]
        item = first[2][0]
        made = fam(rng, lambda modality, colour=None: item if modality == item["modality"] else pick(modality, colour))
        if item not in made[2] or (split == "train" and any(map(is_held_out, made[5]))):
            continue  # the follow-up must be about the first turn's item
        items = [item] + [x for x in made[2] if x is not item]  # prompt order: the first turn's item, then the new
        needs = [[items.index(made[2][i]), key] for i, key in made[6]]
        rec = record(f"toy-{split}-multiturn-{len(out):05d}", split, fam,
                     (made[0], made[1], items, made[3], made[4], made[5], needs))
        rec["family"] = "followup_" + rec["family"]
        out.append(rec | {"turns": [{"instruction": first[1], "n_media": 1,
                                     "target": {"response": first[3], "invocations": []}}]})
    return out


def require(ok: bool, message: str) -> None:
    """An assert that `python -O` cannot strip."""
    if not ok:
        raise ValueError(message)


def check(records: dict[str, list[dict]], media_rows: list[dict]) -> None:
    """The data set's invariants (also tested): held-out combos only outside train, held-out wordings only in
    "wordings" (test_wordings.jsonl, test media), valid targets and `needs`."""
    split_of, pieces = {r["path"]: r["split"] for r in media_rows}, held_out_pieces()
    for split, recs in records.items():
        for r in recs:
            held = [c for c in r["combos"] if is_held_out(c)]
            require(split in ("wordings", "multiturn") or (not held if split == "train" else bool(held)),
                    f"{r['id']}: held-out combos {held} in {split}")
            text = " ".join([r["instruction"]] + [t["instruction"] for t in r.get("turns", [])]).lower()
            said = [p for p in pieces if p in text]
            require(split in ("test", "wordings", "multiturn") or not said,
                    f"{r['id']}: held-out wording {said} in {split}")
            require(all(split_of[m["path"]] == {"wordings": "test", "multiturn": "test"}.get(split, split)
                        for m in r["media"]),
                    f"{r['id']} uses another split's media")
            invocations = r["target"]["invocations"]
            require(all(i["model"] in MODELS and i["prompt"] for i in invocations), f"{r['id']}: bad invocation")
            require(all(i < len(r["media"]) and key in MEDIA[r["media"][i]["modality"]][2] for i, key in r["needs"])
                    and (invocations or not r["needs"]), f"{r['id']}: bad needs {r['needs']}")
    for m, key in (("image", "colour"), ("video", "colour"), ("audio", "pitch"), ("audio", "waveform"),
                   ("audio", "rhythm")):
        for split in SPLITS:
            have = {r["attributes"][key] for r in media_rows if r["modality"] == m and r["split"] == split}
            require(len(have) == len(MEDIA[m][2][key]), f"{split} {m} files lack some {key}: only {sorted(have)}")


def build(out_dir: str, seed: int = 0, preset: str = "full") -> dict[str, int]:
    """Write media files, media.jsonl, {train,val,test}.jsonl, test_wordings.jsonl and test_multiturn.jsonl under
    out_dir; returns counts."""
    cfg, out = PRESETS[preset], Path(out_dir)
    if (out / "media.jsonl").exists():  # a previous toy set: clear only what we wrote, so no stale files remain
        for folder, *_ in MEDIA.values():
            shutil.rmtree(out / folder, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    media_rows = make_media(out, {"image": cfg.images, "audio": cfg.audios, "video": cfg.videos}, seed)
    records = make_records(media_rows, cfg, seed) | {"wordings": make_wordings(media_rows, seed)}
    records["train"] += make_multiturn(media_rows, "train", cfg.multiturn[0], seed)  # after the others: they stay
    records["multiturn"] = make_multiturn(media_rows, "test", cfg.multiturn[1], seed)
    check(records, media_rows)
    write_jsonl(str(out / "media.jsonl"), media_rows)
    for split, recs in records.items():
        write_jsonl(str(out / f"{FILES.get(split, split)}.jsonl"), recs)
    counts = {f"media_{m}": sum(r["modality"] == m for r in media_rows) for m in MEDIA}
    counts.update({f"{split}_{kind}": sum(r["kind"] == kind for r in recs)
                   for split, recs in records.items() for kind in ("input", "output", "reasoning")})
    return counts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog="See data/README.md.")
    p.add_argument("--out", default="data/toy", help="output folder (media files + *.jsonl)")
    p.add_argument("--seed", type=int, default=0, help="same seed -> byte-identical files")
    p.add_argument("--preset", choices=sorted(PRESETS), default="full", help="size: small (tests/CI) or full")
    args = p.parse_args()
    t0 = time.time()
    counts = build(args.out, args.seed, args.preset)
    for split in (*SPLITS, "wordings", "multiturn"):
        print(f"{split:5s}: " + ", ".join(f"{k}={counts[f'{split}_{k}']}" for k in ("input", "output", "reasoning")))
    print("media: " + ", ".join(f"{m}={counts[f'media_{m}']}" for m in MEDIA))
    print(f"wrote {args.out} ({args.preset}, seed {args.seed}) in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
