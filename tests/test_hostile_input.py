"""Hostile input: broken media and data files, written here with the standard library, fed to every stage's
command line. Each run must end in a message that names the file (SystemExit or an exit code), never an uncaught
exception; nothing non-finite reaches a cached feature or a saved weight; nothing is written outside the run's
output folders; every valid file is still accepted.
"""
import json
import math
import os
import struct
import wave
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import chat
import encode
import evaluate
import generate
import train
from test_encode import cached  # every feature in a cache's packed stores

RATE = 16000


def write_wav(path, seconds, freq=440.0):
    """16-bit PCM mono, the standard library's wave module."""
    n = max(1, int(RATE * seconds))
    samples = (int(12000 * math.sin(2 * math.pi * freq * i / RATE)) for i in range(n))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(RATE)
        w.writeframes(b"".join(struct.pack("<h", s) for s in samples))


def write_float_wav(path, value, n=RATE):
    """A 32-bit IEEE-float WAV (format tag 3) whose every sample is `value` (NaN, Inf)."""
    data = struct.pack(f"<{n}f", *[value] * n)
    fmt = struct.pack("<HHIIHH", 3, 1, RATE, RATE * 4, 4, 32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def png_bytes(w, h, rgb):
    """An 8-bit RGB PNG: zlib + struct, as the PNG specification lays it out."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\x00" + bytes(rgb) * w for _ in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    media = root / "media"
    media.mkdir()
    write_wav(media / "good.wav", 1.0)
    write_wav(media / "long.wav", 3.0, 880)  # 3 clips beside the 1-clip files in one batch
    write_wav(media / "short.wav", 0.01)  # shorter than the encoder's 25 ms window
    write_float_wav(media / "nan.wav", float("nan"))
    write_float_wav(media / "inf.wav", float("inf"))
    (media / "empty.wav").write_bytes(b"")
    (media / "truncated.wav").write_bytes((media / "good.wav").read_bytes()[:1000])
    (media / "text.wav").write_text("this is not audio\n")
    (media / "good.png").write_bytes(png_bytes(64, 48, (200, 30, 30)))
    (media / "blue.png").write_bytes(png_bytes(32, 32, (30, 30, 200)))
    (media / "truncated.png").write_bytes(png_bytes(64, 48, (200, 30, 30))[:60])
    (media / "png.wav").write_bytes(png_bytes(8, 8, (0, 0, 0)))
    (media / "broken.mp4").write_bytes(os.urandom(2048))
    return root


def files_under(folder):
    return {p for p in Path(folder).rglob("*") if p.is_file()}


def only_inside(before, after, *allowed):
    """Every file that appeared lies under one of the allowed folders."""
    new = after - before
    return all(any(str(p).startswith(str(a) + os.sep) for a in allowed) for p in new), new


def test_encode_refuses_each_bad_file_and_caches_every_good_one(root, tmp_path, capsys):
    cache, media = tmp_path / "cache", root / "media"
    good = [media / n for n in ("good.wav", "long.wav", "short.wav")]
    bad = [media / n for n in ("nan.wav", "inf.wav", "empty.wav", "truncated.wav", "text.wav", "png.wav")]
    before = files_under(root)
    assert encode.main(["--modality", "audio", *map(str, good + bad), "--encoder", "tiny", "--cache-dir", str(cache),
                        "--batch-size", "4"]) == 1
    err = capsys.readouterr().err
    assert all(f"FAILED {p}:" in err for p in bad) and not any(f"FAILED {p}:" in err for p in good)
    feats = cached(cache)  # the packed feature store (data/store.py)
    assert len(feats) == len(good) and np.isfinite(feats).all()
    assert encode.main(["--modality", "image", str(media / "good.png"), str(media / "truncated.png"),
                        "--encoder", "tiny", "--cache-dir", str(cache)]) == 1
    assert encode.main(["--modality", "video", str(media / "broken.mp4"), "--encoder", "tiny",
                        "--cache-dir", str(cache)]) == 1
    assert f"FAILED {media / 'broken.mp4'}" in capsys.readouterr().err
    assert files_under(root) == before  # the cache is elsewhere: nothing written beside the media
    for argv, message in [(["--modality", "audio", str(media / "nowhere.wav")], "no such file"),
                          (["--modality", "audio", str(media / "good.wav"), "--cache-dir", str(media / "good.png")],
                           "--cache_dir"), (["--modality", "audio", str(media / "good.wav"), "--batch-size", "0"],
                                            "--batch_size")]:
        with pytest.raises(SystemExit, match=message):
            encode.main(argv)


def record(rid, media, prompt="a picture of a red kite", **extra):
    return {"id": rid, "kind": "output", "instruction": "Draw it in this colour.",
            "media": [{"modality": m, "path": p} for m, p in media],
            "target": {"response": "Here is the picture.",
                       "invocations": [{"model": "text-to-image", "prompt": prompt}]}} | extra


def test_train_skips_bad_records_and_never_saves_a_non_finite_weight(root, tmp_path, capsys):
    good = [record(f"g{i}", [("image", "media/good.png" if i % 2 else "media/blue.png"), ("audio", "media/good.wav")],
                   f"a picture of a {'red' if i % 2 else 'blue'} kite") for i in range(6)]
    lines = [json.dumps(good[0]), "", json.dumps([good[1]]), json.dumps(good[1] | {"target": {}}),
             json.dumps(good[2] | {"target": 12345}), json.dumps(good[3] | {"media": "media/good.png"}),
             json.dumps(good[4] | {"instruction": "Draw\u2028it\u0085here."}, ensure_ascii=False),  # not line ends
             *map(json.dumps, good[1:])]
    data = root / "mixed.jsonl"
    data.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")
    out, cache = tmp_path / "out", tmp_path / "cache"
    before = files_under(root)
    argv = ["--preset", "tiny", "--data", str(data), "--val_data", "", "--out_dir", str(out), "--cache_dir",
            str(cache), "--max_steps", "2", "--batch_size", "2", "--micro_batch", "2"]
    train.main(argv)
    said = capsys.readouterr().out
    assert "skipped 4 of 11 records not in the data format" in said
    assert all(f"mixed.jsonl:{n}:" in said for n in (3, 4, 5, 6))  # line 2 is blank, line 7 is valid
    assert all(torch.isfinite(v).all() for v in load_file(out / "adapter.safetensors").values())
    assert only_inside(before, files_under(root), out, cache)[0]
    nan = root / "nan.jsonl"
    nan.write_text(json.dumps(record("n0", [("audio", "media/nan.wav")])) + "\n" + lines[0] + "\n")
    with pytest.raises(SystemExit, match=r"nan.jsonl:1: .*nan.wav: non-finite feature"):
        train.main(argv[:3] + [str(nan)] + argv[4:])
    binary = root / "binary.jsonl"
    binary.write_bytes((root / "media" / "good.png").read_bytes())
    with pytest.raises(SystemExit, match=r"binary.jsonl:1: not UTF-8 text"):
        train.main(argv[:3] + [str(binary)] + argv[4:])
    with pytest.raises(SystemExit):
        train.main(argv + ["--gpus", "0"])


def test_evaluate_and_generate_on_hostile_predictions(root, tmp_path, capsys):
    data = root / "eval.jsonl"
    data.write_text(json.dumps(record("a/b", [])) + "\n" + json.dumps(record("a_b", [])) + "\n"
                    + json.dumps(record("..", [])) + "\n" + json.dumps(record("bad", []) | {"target": {}}) + "\n")
    meta = '{"response": "Sure.", "invocations": [{"model": "text-to-image", "prompt": "a cat"}]}'
    preds = tmp_path / "preds.jsonl"
    rows = [{"id": "a/b", "prediction": meta}, {"id": "a_b", "prediction": meta}, {"id": "..", "prediction": meta},
            {"id": "surrogate", "prediction": meta.replace("a cat", "a cat \\ud800")}]
    text = "\n".join(json.dumps(r) for r in rows).replace("\\\\ud800", "\\ud800")
    preds.write_text(text + '\n\n{"id": "x", "prediction": null}\n{"prediction": "no id"}\n'
                     + json.dumps({"id": "sep", "prediction": "line\u2028separator\u0085inside"}, ensure_ascii=False) + "\n")
    with pytest.raises(SystemExit, match=r'preds.jsonl:6: "prediction" is not a string \(and 1 more bad lines\)'):
        evaluate.main([str(data), "--predictions", str(preds), "--no-captions"])
    out, before = tmp_path / "gen", files_under(tmp_path)
    with pytest.raises(SystemExit, match=r"2 bad lines"):
        generate.main(["--predictions", str(preds), "--zoo", "tiny", "--out", str(out), "--image-steps", "1"])
    ok, new = only_inside(before, files_under(tmp_path), out)
    assert ok, new
    folders = [p.parent for p in new if p.name == "generated.json"]
    assert len(folders) == 4 == len(set(folders))  # a/b, a_b, .. and the surrogate each in a folder of its own
    assert all(json.loads((f / "generated.json").read_text())["outputs"] for f in folders)
    assert "\ud800" not in "".join(p.read_text(errors="strict") for p in new if p.suffix == ".json")
    with pytest.raises(SystemExit, match="--image-steps -1"):
        generate.main(["--predictions", str(preds), "--zoo", "tiny", "--out", str(out), "--image-steps", "-1"])
    with pytest.raises(SystemExit, match="evaluate.py: .*nowhere.jsonl"):
        evaluate.main([str(tmp_path / "nowhere.jsonl"), "--predictions", str(preds)])


def test_chat_one_shot_with_broken_media_is_one_line(root, capsys):
    for path in ("truncated.png", "nowhere.png"):
        with pytest.raises(SystemExit, match=rf"(?s)error: .*{path}"):
            chat.main(["--preset", "tiny", "--image", str(root / "media" / path), "Draw this."])


def test_encode_reads_bom_crlf_data_files_and_refuses_binary_ones(root, tmp_path):
    data = root / "bom.jsonl"
    data.write_bytes(b"\xef\xbb\xbf" + json.dumps(record("b", [("audio", "media/good.wav")])).encode() + b"\r\n")
    assert encode.main([str(data), "--encoder", "tiny", "--cache-dir", str(tmp_path / "cache")]) == 0
    binary = root / "binary-encode.jsonl"
    binary.write_bytes(b'{"media": []}\n' + (root / "media" / "good.png").read_bytes())
    with pytest.raises(SystemExit, match=r"binary-encode.jsonl:2: not UTF-8 text"):
        encode.main([str(binary), "--encoder", "tiny", "--cache-dir", str(tmp_path / "cache")])
