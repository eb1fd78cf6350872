"""benchmarks.py: each of the six protocols end to end on tiny fixtures written here in each benchmark's own file
layout (COCO captions + val2014/, Karpathy's dataset_coco.json, AudioCaps test.csv + WAVs, MSR-VTT
test_videodatainfo.json + MP4s), with the tiny agent, the tiny zoo and tiny random judges passed where the real
networks go; and a kill during generation followed by a rerun that recomputes nothing already written."""
import csv
import functools
import json
import re

import numpy as np
import pytest
import torch
from torch_fidelity.feature_extractor_base import FeatureExtractorBase

import benchmarks
import generate
import metrics
import panns
import zoo_tiny
from agent import PRESETS, ModaVerse, save_adapter
from test_metrics import tiny_clip  # tests/ is on sys.path under pytest

CAPTIONS = ["a red ball on grass", "a blue car in the rain", "a green bird on a branch"]


class TinyInception(FeatureExtractorBase):
    """A tiny random stand-in for torch-fidelity's Inception, same interface: uint8 (B, 3, H, W) -> ((B, 4),)."""

    def __init__(self):
        super().__init__("tiny-inception", ["2048"])
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3)

    @staticmethod
    def get_provided_features_list():
        return ("2048",)

    def forward(self, x):
        return (self.conv(x.float() / 255).mean((2, 3)),)


class EchoAgent:
    """Stands in for a trained agent on text -> X (the random tiny one invokes no generator): asks the generator
    the instruction names for the instruction's caption, and counts the replies it writes."""

    def __init__(self):
        self.replies = 0

    def respond_batch(self, requests, max_new_tokens=256, batch_size=16):
        out = []
        for instruction, media in requests:
            kind, caption = re.fullmatch(r"Generate an? (image|sound|video) of (.*)\.", instruction).groups()
            model = {"image": "text-to-image", "sound": "text-to-audio", "video": "text-to-video"}[kind]
            out.append(json.dumps({"response": "Here.", "invocations": [{"model": model, "prompt": caption}]}))
        self.replies += len(requests)
        return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random adapter and the tiny judges (CLIP from a tiny config with the offline CLIP tokenizer)."""
    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    save_adapter(ModaVerse.from_config(PRESETS["tiny"]), str(root / "adapter"))
    judges = {"inception": TinyInception(), "clip": tiny_clip(),
              "panns": panns.cnn14(widths=(4, 4, 8, 8, 8, 8), classes=5)}
    with pytest.MonkeyPatch.context() as mp:  # the seeded tiny pipelines are built once for the module's runs
        mp.setattr(zoo_tiny, "tiny_pipeline", functools.lru_cache(zoo_tiny.tiny_pipeline))
        yield str(root / "adapter"), judges


def write_coco(root):
    """COCO: annotations/captions_val2014.json + val2014/*.jpg (two captions per image, sizes differ), and
    Karpathy's dataset_coco.json over the same files (a "train" image that the test split leaves out)."""
    from PIL import Image

    (root / "annotations").mkdir(parents=True)
    (root / "val2014").mkdir()
    rng, images, anns, karpathy = np.random.default_rng(0), [], [], []
    for i, caption in enumerate([*CAPTIONS, "a grey cat"]):
        name = f"COCO_val2014_{i + 42:012d}.jpg"
        Image.fromarray(rng.integers(0, 256, (40 + 8 * i, 56, 3), dtype=np.uint8)).save(root / "val2014" / name)
        images.append({"id": i + 42, "file_name": name})
        anns += [{"id": 10 * i, "image_id": i + 42, "caption": caption},
                 {"id": 10 * i + 1, "image_id": i + 42, "caption": f"{caption}, photo"}]
        karpathy.append({"filepath": "val2014", "filename": name, "cocoid": i + 42,
                         "split": "test" if i < 3 else "train",
                         "sentences": [{"raw": caption}, {"raw": f"{caption}, photo"}]})
    (root / "annotations" / "captions_val2014.json").write_text(json.dumps({"images": images, "annotations": anns}))
    (root / "dataset_coco.json").write_text(json.dumps({"images": karpathy, "dataset": "coco"}))


def write_audiocaps(root):
    """AudioCaps: test.csv (audiocap_id,youtube_id,start_time,caption; two captions per clip) + test/<id>.wav."""
    import soundfile as sf

    (root / "test").mkdir(parents=True)
    with open(root / "test.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["audiocap_id", "youtube_id", "start_time", "caption"])
        for i, caption in enumerate(CAPTIONS):
            rate = 32000 if i == 0 else 16000  # one at 32 kHz: resampled to PANNs' 16 kHz
            t = np.arange(rate // 2) / rate
            sf.write(root / "test" / f"yt{i}.wav", 0.3 * np.sin(2 * np.pi * 220 * (i + 1) * t), rate)
            w.writerows([[2 * i, f"yt{i}", 30, caption], [2 * i + 1, f"yt{i}", 30, f"{caption} loudly"]])


def write_msrvtt(root):
    """MSR-VTT: test_videodatainfo.json ({"videos": [{"video_id", "split"}], "sentences": [...]}) + TestVideo/*.mp4."""
    import av

    (root / "TestVideo").mkdir(parents=True)
    videos, sentences, rng = [], [], np.random.default_rng(1)
    for i, caption in enumerate(CAPTIONS):
        vid = f"video{7010 + i}"
        with av.open(str(root / "TestVideo" / f"{vid}.mp4"), "w") as c:
            s = c.add_stream("libx264", rate=8)
            s.height, s.width, s.pix_fmt = 48, 64, "yuv420p"
            for _ in range(6):
                frame = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
                c.mux(s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            c.mux(s.encode())
        videos.append({"video_id": vid, "split": "test", "id": 7010 + i})
        sentences += [{"caption": caption, "video_id": vid, "sen_id": 2 * i},
                      {"caption": f"{caption} slowly", "video_id": vid, "sen_id": 2 * i + 1}]
    videos.append({"video_id": "video1", "split": "train", "id": 1})  # another split: not read, not on disk
    sentences.append({"caption": "a train video", "video_id": "video1", "sen_id": 99})
    (root / "test_videodatainfo.json").write_text(json.dumps({"videos": videos, "sentences": sentences}))


LAYOUT = {"i2t": (write_coco, "dataset_coco.json", ""),
          "t2i": (write_coco, "annotations/captions_val2014.json", "val2014"),
          "a2t": (write_audiocaps, "test.csv", "test"), "t2a": (write_audiocaps, "test.csv", "test"),
          "v2t": (write_msrvtt, "test_videodatainfo.json", "TestVideo"),
          "t2v": (write_msrvtt, "test_videodatainfo.json", "TestVideo")}


def run(name, tmp_path, tiny, *extra, judges=True):
    write, annotations, media = LAYOUT[name]
    if not (tmp_path / "data").exists():
        write(tmp_path / "data")
    argv = [name, str(tmp_path / "data" / annotations), "--media", str(tmp_path / "data" / media), "--adapter",
            tiny[0], "--zoo", "tiny", "--out", str(tmp_path / "out"), "--max_new_tokens", "6", "--no-meteor",
            "--cache_dir", str(tmp_path / "cache"), *extra]
    return benchmarks.main(argv, judges=tiny[1] if judges else None)


@pytest.mark.parametrize("name", ["i2t", "a2t", "v2t"])
def test_x_to_text_answers_with_the_media_and_scores_the_reply(name, tmp_path, tiny, capsys, monkeypatch):
    monkeypatch.setattr(metrics.shutil, "which", lambda cmd: None)  # no JVM start per test (PTB tokenizer: Java)
    report = run(name, tmp_path, tiny)
    assert report["n"] == 3 and report["rows"]["agent"]["n"] == "3/3"  # Karpathy's "train" image is not read
    preds = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 3
    suffix = {"i2t": ", photo", "a2t": " loudly", "v2t": " slowly"}[name]
    refs = {p["id"]: [c, c + suffix] for p, c in zip(preds, CAPTIONS)}
    hyps = {p["id"]: generate.parse_meta_response(p["prediction"]).response for p in preds}
    expected = metrics.caption_metrics(refs, hyps, meteor=False)  # the replies scored against all captions
    scale = benchmarks.BENCHMARKS[name].scale
    for key in benchmarks.BENCHMARKS[name].paper:
        if key in expected:
            assert report["rows"]["agent"][key] == pytest.approx(scale * expected[key])
    out = capsys.readouterr().out
    assert f"Table {benchmarks.BENCHMARKS[name].table}" in out and "ModaVerse (paper)" in out
    if name == "a2t":  # SPICE needs the CoreNLP jars: skipped with the file names, CIDEr still printed
        assert "CIDEr" in report["rows"]["agent"] and any("--corenlp" in s for s in report["skipped"])


@pytest.mark.parametrize("name", ["t2i", "t2a", "t2v"])
def test_text_to_x_renders_through_the_agent_and_directly_and_scores(name, tmp_path, tiny, monkeypatch):
    monkeypatch.setattr(benchmarks, "load_agent", lambda adapter, device: EchoAgent())
    routes = ("agent", "direct") if name == "t2i" else ("agent",)  # the direct row costs as much again
    report = run(name, tmp_path, tiny, "--limit", "2", *([] if name == "t2i" else ["--no-direct"]))  # 2: a covariance
    assert list(report["rows"]) == list(routes)
    real = [str(tmp_path / "data" / LAYOUT[name][2] / f) for f in
            {"t2i": [f"COCO_val2014_{i + 42:012d}.jpg" for i in range(2)], "t2a": [f"yt{i}.wav" for i in range(2)],
             "t2v": [f"video{7010 + i}.mp4" for i in range(2)]}[name]]
    for route in routes:
        row = report["rows"][route]
        files = sorted(str(p) for p in (tmp_path / "out" / route).glob("*/00-*"))
        assert row["n"] == "2/2" and len(files) == 2
        if name == "t2a":  # FD of the PANNs embeddings, IS of its logits (>= 1 by Jensen)
            g, r = metrics.audio_features(files, tiny[1]["panns"]), metrics.audio_features(real, tiny[1]["panns"])
            assert row["FD"] == pytest.approx(metrics.feature_distance(g[0], r[0])) and row["IS"] >= 1.0
            continue
        frames = 4 if name == "t2v" else None  # a real video gives as many frames as a generated one (tiny zoo: 4)
        g = metrics.visual_features(files, tiny[1]["inception"], 32)
        r = metrics.visual_features(real, tiny[1]["inception"], 32, frames)
        assert len(r) == 2 * (frames or 1) and row["FID"] == pytest.approx(metrics.feature_distance(g, r))
        assert -1 <= row["CLIPSIM"] <= 1
    assert "the paper's route" in report["route"]
    gen = json.loads(next((tmp_path / "out" / "agent").glob("*/generated.json")).read_text())["outputs"][0]
    assert gen["prompt"] == CAPTIONS[0]  # the agent's prompt, from "Generate ... of a red ball on grass."


def test_a_kill_during_generation_then_a_rerun_recomputes_nothing(tmp_path, tiny, monkeypatch):
    """Killed while rendering the second file; the rerun decodes no reply again and renders only that file. The
    rerun has no judges' weights: each metric is skipped with the file to fetch and the flag that takes it."""
    agent, calls, real_call, first = EchoAgent(), [], generate.ModelZoo.__call__, {}
    monkeypatch.setattr(benchmarks, "load_agent", lambda adapter, device: agent)

    class Killed(Exception):
        pass

    def counted(zoo, model, prompt, seed):
        calls.append((model, prompt, seed))
        if len(calls) == 2 and not first:
            raise Killed  # the kill: during the second file
        return real_call(zoo, model, prompt, seed)
    monkeypatch.setattr(generate.ModelZoo, "__call__", counted)
    with pytest.raises(Killed):
        run("t2i", tmp_path, tiny, "--limit", "2", "--no-direct")
    first.update({p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*.png")})
    assert len(first) == 1 and agent.replies == 2 and not list((tmp_path / "out").rglob(".tmp-*"))
    calls.clear()
    report = run("t2i", tmp_path, tiny, "--limit", "2", "--no-direct", "--inception", str(tmp_path / "none.pth"),
                 "--clip", str(tmp_path / "no-clip"), judges=False)
    assert agent.replies == 2  # no reply decoded again
    assert calls == [("text-to-image", CAPTIONS[1], 1)]  # only the second item's file, with its own seed
    assert all(p.stat().st_mtime_ns == t for p, t in first.items())  # nothing written is rewritten
    assert report["rows"]["agent"] == {"n": "2/2"}
    fid, clip = report["skipped"]
    assert "none.pth not found" in fid and metrics.INCEPTION in fid and "--inception" in fid
    assert "no-clip" in clip and "--clip" in clip
    with pytest.raises(SystemExit, match="holds a run of"):  # the same --out with another adapter: refused
        run("t2i", tmp_path, tiny, "--limit", "2", "--no-direct", "--adapter", str(tmp_path))
    net, why = metrics.load_judge("panns", str(tmp_path / "none.pth"))
    assert net is None and "Cnn14_16k" in why and "--panns" in why


def test_a_broken_media_file_is_named_and_left_out(tmp_path, tiny, capsys, monkeypatch):
    """Real downloads hold broken files (AudioCaps comes from YouTube): the item is named and left out, the rest
    is scored; an item whose file is missing is counted."""
    monkeypatch.setattr(metrics.shutil, "which", lambda cmd: None)
    write_audiocaps(tmp_path / "data")
    with open(tmp_path / "data" / "test.csv", "a", newline="") as f:
        csv.writer(f).writerows([[90, "ytbad", 0, "a broken clip"], [91, "ytgone", 0, "a missing clip"]])
    (tmp_path / "data" / "test" / "ytbad.wav").write_bytes(b"RIFF\x00\x00not a wav")
    report = run("a2t", tmp_path, tiny)
    assert report["n"] == 3 and report["missing_media"] == 1 and report["rows"]["agent"]["n"] == "3/3"
    err = capsys.readouterr().err
    assert "ytbad.wav" in err and "ytgone.wav" in err
