"""Tests for data/mix.py (the training mix): no media file in two splits, shares per source/kind, de-duplication,
seeded output; and the README's paper data commands run start to finish on small fixtures.

Run: python -m pytest -q tests/test_mix.py   (CPU, offline, ~1 s)
"""
import json
import os
import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "data"))
import convert  # noqa: E402
import make_instructions  # noqa: E402
import mix  # noqa: E402
from records import DataError, read_jsonl, validate_record  # noqa: E402


def rec(rid, kind, instruction, media, response, model=None, **extra):
    return {"id": rid, "kind": kind, "instruction": instruction, "media": media,
            "target": {"response": response, "invocations": [{"model": model, "prompt": response}] if model else []},
            **extra}


def write(path: Path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.fixture
def sources(tmp_path):
    """Four sources in three folders; media paths relative to each file's folder; images shared across sources."""
    img = lambda i, rel="": {"modality": "image", "path": f"{rel}img/{i}.png"}  # noqa: E731
    wav = lambda i, rel="": {"modality": "audio", "path": f"{rel}wav/{i}.wav"}  # noqa: E731
    for i in range(12):
        for sub, ext in (("img", "png"), ("wav", "wav")):
            (tmp_path / "media" / sub).mkdir(parents=True, exist_ok=True)
            (tmp_path / "media" / sub / f"{i}.{ext}").write_bytes(b"x")
    coco = [rec(f"coco-{i}-{c}", "input", "Describe this image.", [img(i)], f"caption {c} of image {i}")
            for i in range(12) for c in range(3)]
    coco.append(dict(coco[0], id="coco-again"))  # the same record under another id: a duplicate
    audio = [rec(f"ac-{i}", "input", "Describe this audio clip.", [wav(i)], f"sound {i}") for i in range(12)]
    gen = [rec(f"gen-out-{i}", "output", f"Draw what makes this sound, like image {i}.",
               [wav(i, "../media/"), img((i + 1) % 12, "../media/")], f"thing {i}", "text-to-image") for i in range(12)]
    gen += [rec(f"gen-text-{i}", "output", f"Play note {i}.", [], f"note {i}", "text-to-audio") for i in range(20)]
    gen += [rec(f"gen-rs-{i}", "reasoning", "Which image is darker?", [img(i, "../media/"), img(11 - i, "../media/")],
                f"The first, {i}.") for i in range(6)]
    gen += [rec(f"gen-in-{i}", "input", "Describe both.", [img(i, "../media/")], f"both {i}") for i in range(5)]
    gen.append(dict(coco[5], id="gen-copy", media=[img(1, "../media/")]))  # coco-1-2 again, from another folder
    llava = [rec(f"llava-{i}", "input", "And its colour?", [img(i)], f"Red {i}.",
                 turns=[{"instruction": "What is this?", "n_media": 1,
                         "target": {"response": f"A bus {i}.", "invocations": []}}]) for i in range(10)]
    return {"coco": write(tmp_path / "media" / "coco.jsonl", coco),
            "audiocaps": write(tmp_path / "media" / "audiocaps.jsonl", audio),
            "gen": write(tmp_path / "gen" / "instructions.jsonl", gen),
            "llava": write(tmp_path / "media" / "llava.jsonl", llava)}


RATIOS = ["coco=0.3", "audiocaps=0.2", "gen/output=0.3", "gen/reasoning=0.1", "llava=0.1"]


def read_out(out: Path):
    return {s: read_jsonl(str(out / f"{s}.jsonl")) for s in mix.SPLITS}


def test_splits_share_no_media_shares_hold_and_paths_resolve(sources, tmp_path):
    out = tmp_path / "mixed"
    summary = mix.mix(sources, str(out), RATIOS, total=50, val=0.2, test=0.2, seed=0)
    splits = read_out(out)
    files = {s: {os.path.realpath(out / m["path"]) for r in recs for m in r["media"]} for s, recs in splits.items()}
    assert not files["train"] & files["val"] and not files["train"] & files["test"] and not files["val"] & files["test"]
    assert all(os.path.isfile(f) for fs in files.values() for f in fs)  # paths rebased to the output folder
    assert 0 < len(splits["val"]) <= 10 and 0 < len(splits["test"]) <= 10 and sum(map(len, splits.values())) == 50
    every = [r for recs in splits.values() for r in recs]
    key = lambda r: r["origin"] + (f"/{r['kind']}" if r["origin"] == "gen" else "")  # noqa: E731
    for spec in RATIOS:  # each share within rounding of the mix's size
        name, share = spec.split("=")
        assert abs(sum(key(r) == name for r in every) - float(share) * 50) <= 0.5, name
    assert all(not validate_record(r) and r["split"] == s for s, recs in splits.items() for r in recs)
    assert any("turns" in r for r in every)  # multi-turn records pass through whole
    rows = {(r["source"], r["kind"]): r for r in summary["rows"]}
    assert rows["gen", "input"]["left_out"] == 5 and rows["coco", "input"]["duplicates"] == 1
    assert rows["gen", "output"]["duplicates"] == 0 and rows["gen", "input"]["duplicates"] == 1  # coco's, again
    assert json.loads((out / "mix_summary.json").read_text())["records"] == summary["records"]


def test_duplicates_dropped_and_natural_shares_without_ratio(sources, tmp_path):
    summary = mix.mix(sources, str(tmp_path / "all"), val=0, test=0)
    every = read_out(tmp_path / "all")["train"]
    assert len(every) == 37 + 12 + 44 + 10 - 2  # every record once: coco-again and gen-copy are duplicates
    assert {"coco-again", "gen-copy"}.isdisjoint(r["id"] for r in every)
    assert summary["splits"] == {"train": 101, "val": 0, "test": 0}


def test_same_seed_same_bytes_other_seed_differs(sources, tmp_path):
    texts = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        mix.mix(sources, str(tmp_path / name), RATIOS, total=50, val=0.2, test=0.2, seed=seed)
        texts.append([(tmp_path / name / f"{s}.jsonl").read_bytes() for s in mix.SPLITS])
    assert texts[0] == texts[1] and texts[0] != texts[2]


def test_user_mistakes_are_one_line_errors(sources, tmp_path, capsys):
    out = str(tmp_path / "x")
    with pytest.raises(DataError, match=r"not enough records for --total: coco: 36 records, the mix asks 300"):
        mix.mix(sources, out, RATIOS, total=1000)
    with pytest.raises(DataError, match="no input is named 'webvid'"):
        mix.mix(sources, out, ["webvid=1"])
    with pytest.raises(DataError, match="audiocaps has no 'output' record"):
        mix.mix(sources, out, ["audiocaps/output=1"])
    with pytest.raises(DataError, match="an input would be overwritten"):
        mix.mix({"train": str(tmp_path / "x" / "train.jsonl")}, out)
    with pytest.raises(SystemExit, match="two inputs are named 'coco'"):
        mix.main([sources["coco"], sources["coco"], "--out", out])
    with pytest.raises(SystemExit, match="--ratio coco=lots: expected KEY=SHARE"):
        mix.main([sources["coco"], "--out", out, "--ratio", "coco=lots"])


def readme_data_commands() -> list[list[str]]:
    """The data/*.py commands of the README's paper section, as argument lists (continuations joined)."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## The paper's configuration"):]
    block = section[section.index("```bash"):section.index("```", section.index("```bash") + 3)]
    lines = re.sub(r"\\\n\s*", " ", block).splitlines()
    return [shlex.split(line, comments=True)[1:] for line in lines
            if re.match(r"(\.venv/bin/)?python data/\w+\.py ", line)]


def test_readme_paper_data_commands_run_start_to_finish(tmp_path, monkeypatch, capsys):
    """On fixture files named as in the README (make_instructions offline: --template for --model)."""
    monkeypatch.chdir(tmp_path)
    for d in ("coco/train2017", "audiocaps/train", "msrvtt/videos", "annotations"):
        os.makedirs(d)
    for i in range(6):
        Path(f"coco/train2017/{i}.jpg").write_bytes(b"x")
        Path(f"audiocaps/train/y{i}.wav").write_bytes(b"x")
        Path(f"msrvtt/videos/video{i}.mp4").write_bytes(b"x")
    Path("llava_instruct_150k.json").write_text(json.dumps([
        {"id": str(i), "image": f"{i}.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": f"A cat {i}."},
            {"from": "human", "value": "Is it asleep?"}, {"from": "gpt", "value": "Yes."}]} for i in range(6)]))
    Path("annotations/captions_train2017.json").write_text(json.dumps({
        "images": [{"id": i, "file_name": f"{i}.jpg"} for i in range(6)],
        "annotations": [{"id": 10 * i + c, "image_id": i, "caption": f"a cat number {i}, take {c}"}
                        for i in range(6) for c in range(2)]}))
    Path("audiocaps/train.csv").write_text("audiocap_id,youtube_id,start_time,caption\n"
                                           + "".join(f"{i},y{i},0,a dog barks {i}\n" for i in range(6)))
    Path("train_val_videodatainfo.json").write_text(json.dumps({
        "videos": [{"video_id": f"video{i}", "split": "train"} for i in range(6)],
        "sentences": [{"video_id": f"video{i}", "sen_id": i, "caption": f"a man runs {i}"} for i in range(6)]}))
    tools = {"convert": convert.main, "make_instructions": make_instructions.main, "mix": mix.main}
    commands = readme_data_commands()
    assert [c[0] for c in commands] == ["data/convert.py"] * 4 + ["data/make_instructions.py", "data/mix.py"]
    for cmd in commands:
        argv = shlex.split(" ".join(cmd[1:]).replace("--model gpt-4o-mini", "--template")
                           .replace("--num-output 100000", "--num-output 12"))
        tools[Path(cmd[0]).stem](argv + (["--val", "0.1", "--test", "0.1"] if cmd[0] == "data/mix.py" else []))
    splits = {s: read_jsonl(f"data/real/{s}.jsonl") for s in mix.SPLITS}
    assert all(splits.values()) and any("turns" in r for r in splits["train"] + splits["val"] + splits["test"])
    origins = {r["origin"] for recs in splits.values() for r in recs}
    assert origins == {"llava", "coco", "audiocaps", "msrvtt", "instructions"}
    files = {s: {m["path"] for r in recs for m in r["media"]} for s, recs in splits.items()}
    assert not files["train"] & (files["val"] | files["test"]) and not files["val"] & files["test"]
    assert "no media file is in two splits" in capsys.readouterr().out
