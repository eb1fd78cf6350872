"""probe.py: the linear probe on cached features and the per-record ceiling that evaluate.py prints per path."""
import json

import numpy as np
from PIL import Image, ImageDraw

import evaluate
import probe

COLOURS = ("red", "green", "blue")
PITCHES = ("low", "high")


def features(paths, modality, **_):
    """Stand-in for encode_files: the attributes one-hot (+ noise), read back from the file name. A file whose
    name says "lie" carries the features of another colour: no probe can read its true colour."""
    rng = np.random.default_rng(len(paths))
    out = []
    for p in map(str, paths):
        name = p.rsplit("/", 1)[-1].split(".")[0]  # e.g. "img-red-3" or "img-red-lie"
        value = name.split("-")[1]
        vocab = COLOURS if modality == "image" else PITCHES
        if name.endswith("lie"):
            value = vocab[(vocab.index(value) + 1) % len(vocab)]
        out.append(np.eye(8)[vocab.index(value)] + 0.05 * rng.standard_normal(8))
    return np.array(out, np.float32)


def test_record_ceiling_is_the_joint_probe_accuracy_on_the_needed_attributes(tmp_path, monkeypatch):
    monkeypatch.setattr(probe, "encode_files", features)
    media = [{"path": f"img-{c}-{i}.png", "modality": "image", "split": "train", "attributes": {"colour": c}}
             for c in COLOURS for i in range(4)]
    media += [{"path": f"aud-{p}-{i}.wav", "modality": "audio", "split": "train", "attributes": {"pitch": p}}
              for p in PITCHES for i in range(4)]
    media += [{"path": "img-red-lie.png", "modality": "image", "split": "test", "attributes": {"colour": "red"}},
              {"path": "img-blue-9.png", "modality": "image", "split": "test", "attributes": {"colour": "blue"}},
              {"path": "aud-high-9.wav", "modality": "audio", "split": "test", "attributes": {"pitch": "high"}}]
    (tmp_path / "media.jsonl").write_text("".join(json.dumps(m) + "\n" for m in media))

    def record(rid, items, needs, model="text-to-image"):
        return {"id": rid, "kind": "output", "instruction": "Draw.", "needs": needs,
                "media": [{"modality": "audio" if p.startswith("aud") else "image", "path": p} for p in items],
                "target": {"response": "Here.", "invocations": [{"model": model, "prompt": "a picture"}]}}

    records = [record("ok", ["img-blue-9.png"], [[0, "colour"]]),
               record("lie", ["img-red-lie.png"], [[0, "colour"]]),
               record("pair", ["aud-high-9.wav", "img-blue-9.png"], [[0, "pitch"], [1, "colour"]]),
               record("pair-lie", ["aud-high-9.wav", "img-red-lie.png"], [[0, "pitch"], [1, "colour"]]),
               record("none", ["img-red-lie.png"], []),  # needs nothing from the media: no ceiling
               {**record("text", [], []), "media": []}]
    ceilings = probe.record_ceilings(records, str(tmp_path), str(tmp_path / "media.jsonl"))
    assert ceilings == {"ok": True, "lie": False, "pair": True, "pair-lie": False}
    report = evaluate.score_meta_responses(records, {r["id"]: "" for r in records}, ceilings)
    assert report["groups"]["image->image"]["ceiling"] == 0.5 and report["groups"]["audio+image->image"]["ceiling"] == 0.5
    assert report["groups"]["all"]["ceiling"] == 0.5 and report["groups"]["text->image"]["ceiling"] is None
    table = evaluate.format_table(report).splitlines()
    assert table[0].split()[:6] == ["group", "n", "JSON", "parse", "model", "prompt="] and "ceiling" in table[0]
    assert evaluate.format_table(evaluate.score_meta_responses(records, {})).count("ceiling") == 0


def test_linear_probe_reads_a_linear_attribute_and_not_noise():
    rng = np.random.default_rng(0)
    y = [COLOURS[i % 3] for i in range(90)]
    x = np.array([np.eye(8)[COLOURS.index(c)] for c in y]) + 0.1 * rng.standard_normal((90, 8))
    fit = np.arange(90) < 60
    assert probe.linear_probe(x, y, fit) == 1.0
    assert probe.linear_probe(rng.standard_normal((90, 8)), y, fit) < 0.6


def test_probe_of_real_encoder_features_finds_colour_and_not_noise(tmp_path):
    """probe() on the tiny random ImageBind (encode.py): colour survives it, a label the image does not show
    stays near chance (1/3)."""
    rng = np.random.default_rng(0)
    colours = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}
    lines = []
    for i in range(48):
        c = list(colours)[i % 3]
        img = Image.new("RGB", (224, 224), (255, 255, 255))
        draw = ImageDraw.Draw(img)
        (draw.rectangle if i % 2 else draw.ellipse)([40, 40, 184, 184], fill=colours[c])
        img.save(tmp_path / f"{i}.png")
        lines.append(json.dumps({"path": f"{i}.png", "modality": "image",
                                 "attributes": {"colour": c, "noise": str(rng.integers(3))}}))
    (tmp_path / "media.jsonl").write_text("\n".join(lines) + "\n")
    rows = {r["attribute"]: r for r in probe.probe(str(tmp_path / "media.jsonl"), encoder="tiny",
                                                    cache_dir=tmp_path / "c", progress=False)}
    assert rows["colour"]["split"] >= 0.9
    assert rows["noise"]["split"] <= 0.7
