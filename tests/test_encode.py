"""encode.py: parity with the imagebind package, the feature store cache, and bad input."""
import json
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import encode
import preprocess
from data.store import FeatureStore

ROOT = Path(__file__).resolve().parents[1]


def cached(cache_dir) -> np.ndarray:
    """Every feature held by the packed stores under cache_dir (all encoders), (N, D)."""
    stores = [FeatureStore(f) for f in sorted(Path(cache_dir).glob("*/store"))]
    return np.concatenate([s.read(np.arange(len(s))) for s in stores] or [np.zeros((0, 512), np.float32)])


def write_png(path, rgb, shape="square"):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (224, 224), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    (draw.rectangle if shape == "square" else draw.ellipse)([40, 40, 184, 184], fill=rgb)
    img.save(path)


def write_wav(path, freq, seconds=2.0, sr=16000):
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr, subtype="PCM_16")


def write_mp4(path, rgb, frames=16, fps=8, width=224):
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=fps)
        s.width, s.height = width, 224
        s.pix_fmt = "yuv420p"
        for i in range(frames):
            a = np.full((224, width, 3), 255, np.uint8)
            a[80:144, 8 * i:8 * i + 64] = rgb
            for pkt in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    write_png(d / "red.png", (220, 20, 20))
    write_png(d / "blue.png", (20, 20, 220), "circle")
    write_wav(d / "low.wav", 220)
    write_wav(d / "long.wav", 660, seconds=3.0)
    write_mp4(d / "green.mp4", (20, 200, 20))
    write_mp4(d / "long.mp4", (200, 200, 20), frames=24)  # 3 s: the package's 5 temporal clips differ
    write_mp4(d / "wide.mp4", (20, 20, 200), frames=24, width=320)  # and its 3 spatial crops differ
    return d


def test_audio_reader_matches_wave_module(media):
    """Our soundfile reader (the fix for torchaudio.load) returns what the stdlib decodes."""
    x, sr = preprocess._load_audio(media / "low.wav")
    with wave.open(str(media / "low.wav")) as w:
        ref = np.frombuffer(w.readframes(w.getnframes()), np.int16) / 32768.0
    assert sr == 16000 and x.shape == (1, 32000)
    np.testing.assert_allclose(x[0].numpy(), ref, atol=1e-7)


@pytest.mark.parametrize("name,modality,package_loader", [
    ("red.png", "image", "load_and_transform_vision_data"),
    ("low.wav", "audio", "load_and_transform_audio_data"),
    ("long.wav", "audio", "load_and_transform_audio_data"),
    ("green.mp4", "video", "load_and_transform_video_data"),
    ("long.mp4", "video", "load_and_transform_video_data"),
    ("wide.mp4", "video", "load_and_transform_video_data"),
])
def test_tiny_encoder_equals_package_preprocessing_and_model(media, tmp_path, monkeypatch, name, modality,
                                                             package_loader):
    """encode_files == the imagebind package's own loader (default clips) + ImageBindModel."""
    ours = encode.encode_files([media / name], modality, "tiny", cache_dir=tmp_path, progress=False)[0]
    model = encode.load_encoder("tiny")
    # the package passes sample_rate= to EncodedVideo.from_path, which pytorchvideo 0.1.5 rejects
    from_path = preprocess.EncodedVideo.from_path
    monkeypatch.setattr(preprocess.ib_data, "EncodedVideo", type("EncodedVideo", (), {"from_path": staticmethod(
        lambda path, decoder, decode_audio, **_: from_path(path, decoder=decoder, decode_audio=decode_audio))}))
    with torch.inference_mode():
        x = getattr(preprocess.ib_data, package_loader)([str(media / name)], "cpu")
        ref = model({encode.IB_KEY[modality]: x})[encode.IB_KEY[modality]][0].numpy()
    assert ours.shape == (encode.embed_dim("tiny"),)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)


def test_tiny_encoder_is_seeded_and_separates_inputs(media, monkeypatch):
    """The cache names features by the encoder's config (encoder_id), so the random 'tiny' encoder must be the
    same whatever the global RNG did before (another process: encode.py, then train.py) and leave that RNG
    alone; another seed is another encoder, and different media must get different features."""
    x = {n: encode.preprocess(media / n, "image")[None] for n in ("red.png", "blue.png")}
    vision = lambda m, n: m({encode.IB_KEY["image"]: x[n]})[encode.IB_KEY["image"]][0]  # noqa: E731  (512,)
    a = encode.load_encoder("tiny")  # the cached one the other tests use
    torch.manual_seed(7), torch.rand(3)
    state = torch.get_rng_state()
    b = encode.load_encoder.__wrapped__("tiny")  # built afresh, after other draws from the global RNG
    assert torch.equal(torch.get_rng_state(), state)  # and without consuming the caller's RNG stream
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(p, q), n
    monkeypatch.setitem(encode.ENCODERS, "tiny", encode.EncoderConfig(64, 2, 4, 512, seed=1))
    c = encode.load_encoder.__wrapped__("tiny")
    with torch.inference_mode():
        red_a, red_b, red_c = (vision(m, "red.png") for m in (a, b, c))
        blue_a = vision(a, "blue.png")
    assert torch.equal(red_a, red_b)
    assert torch.cosine_similarity(red_a, blue_a, 0) < 0.999 and torch.cosine_similarity(red_a, red_c, 0) < 0.99


def test_cache_hit_miss_and_invalidation(media, tmp_path, monkeypatch):
    png = tmp_path / "img.png"
    write_png(png, (220, 20, 20))
    first = encode.encode_files([png], "image", "tiny", cache_dir=tmp_path / "c", progress=False)
    assert len(cached(tmp_path / "c")) == 1

    calls = []
    real = encode.preprocess
    monkeypatch.setattr(encode, "preprocess", lambda *a: calls.append(a) or real(*a))
    again = encode.encode_files([png, png], "image", "tiny", cache_dir=tmp_path / "c", progress=False)
    assert calls == [] and np.array_equal(again[0], first[0]) and np.array_equal(again[1], first[0])

    write_png(png, (20, 20, 220))  # same path, new content: must not return the stale embedding
    changed = encode.encode_files([png], "image", "tiny", cache_dir=tmp_path / "c", progress=False)
    assert len(calls) == 1 and not np.allclose(changed, first)

    monkeypatch.setitem(encode.ENCODERS, "tiny", encode.EncoderConfig(64, 2, 4, 512, seed=1))
    assert encode.encoder_id("tiny") not in {p.name for p in (tmp_path / "c").iterdir()}  # another encoder: folder
    encode.load_encoder.cache_clear()
    other = encode.encode_files([png], "image", "tiny", cache_dir=tmp_path / "c", progress=False)
    encode.load_encoder.cache_clear()
    assert not np.allclose(other, changed)
    assert len(cached(tmp_path / "c")) == 3


def test_each_video_is_opened_once(media, tmp_path, monkeypatch):
    """Its duration picks 1 or 5 clips: read it from the same opening that gives the frames."""
    opened = []
    real = preprocess.EncodedVideo

    class Counting:
        @staticmethod
        def from_path(path, **kw):
            opened.append(path)
            return real.from_path(path, **kw)

    monkeypatch.setattr(preprocess, "EncodedVideo", Counting)
    for name in ["green.mp4", "long.mp4"]:  # 1 clip and 5 clips
        encode.encode_files([media / name], "video", "tiny", cache_dir=tmp_path, progress=False)
    assert sorted(opened) == sorted([str(media / "green.mp4"), str(media / "long.mp4")])


def test_second_pass_loads_no_encoder_and_decodes_nothing(media, tmp_path, monkeypatch):
    rec = {"media": [{"modality": m, "path": n} for m, n in [("image", "red.png"), ("audio", "low.wav"),
                                                              ("video", "green.mp4")]]}
    (media / "all.jsonl").write_text(json.dumps(rec) + "\n")
    argv = [str(media / "all.jsonl"), "--encoder", "tiny", "--cache-dir", str(tmp_path)]
    assert encode.main(argv) == 0

    def boom(*a, **k):
        raise AssertionError("a second pass over cached files must not load the encoder or decode media")

    monkeypatch.setattr(encode, "load_encoder", boom)
    monkeypatch.setattr(encode, "preprocess", boom)
    assert encode.main(argv) == 0
    # a file that cannot be read is reported without building the encoder for nothing
    monkeypatch.undo()
    monkeypatch.setattr(encode, "load_encoder", boom)
    (tmp_path / "text.png").write_text("this is not a PNG")
    with pytest.raises(encode.EncodeError) as err:
        encode.encode_files([media / "red.png", tmp_path / "text.png"], "image", "tiny", cache_dir=tmp_path)
    assert list(err.value.failures) == [str(tmp_path / "text.png")]


def test_a_kill_before_the_index_commit_leaves_the_store_as_it_was(media, tmp_path, monkeypatch):
    """The rows of red.png reach the shard, the process dies before the index names them: the store still reads
    (as empty), and the next run writes red.png's row over the leftover bytes."""
    import data.store

    real = data.store.os.replace
    def killed(src, dst):
        if str(dst).endswith("index.npy"):
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(data.store.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        encode.encode_files([media / "red.png"], "image", "tiny", cache_dir=tmp_path, progress=False)
    monkeypatch.undo()
    (store,) = [FeatureStore(f) for f in tmp_path.glob("*/store")]
    assert len(store) == 0 and (store.folder / "shard-00000.bin").stat().st_size == 512 * 4  # rows, no index
    assert not list(store.folder.glob("index*"))
    both = [media / "red.png", media / "blue.png"]
    x = encode.encode_files(both, "image", "tiny", cache_dir=tmp_path, progress=False)
    ref = encode.encode_files(both, "image", "tiny", cache_dir=tmp_path / "ref", progress=False)
    assert np.array_equal(x, ref) and len(cached(tmp_path)) == 2
    assert (store.folder / "shard-00000.bin").stat().st_size == 2 * 512 * 4  # the leftover row was overwritten


def test_bad_files_are_reported_and_the_rest_encoded(media, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "text.wav").write_text("this is not audio")
    (bad / "text.png").write_text("this is not a PNG")
    (bad / "empty.mp4").write_bytes(b"")
    png = (media / "red.png").read_bytes()
    (bad / "cut.png").write_bytes(png[: len(png) // 2])
    wav = (media / "low.wav").read_bytes()
    (bad / "cut.wav").write_bytes(wav[: len(wav) // 2])
    cases = {
        "image": ([media / "red.png", bad / "text.png", bad / "cut.png", bad / "missing.png"],
                  {"text.png": "cannot identify image", "cut.png": "truncated", "missing.png": "No such file"}),
        "audio": ([bad / "text.wav", media / "low.wav", bad / "cut.wav", media / "red.png"],
                  {"text.wav": "Format not recognised", "cut.wav": "truncated WAV", "red.png": "Format not"}),
        "video": ([media / "green.mp4", bad / "empty.mp4", bad / "text.wav"],
                  {"empty.mp4": "empty file (0 bytes)", "text.wav": "Failed to open video"}),
    }
    for modality, (paths, expected) in cases.items():
        with pytest.raises(encode.EncodeError) as err:
            encode.encode_files(paths, modality, "tiny", cache_dir=tmp_path / "c", progress=False)
        reasons = {Path(p).name: why for p, why in err.value.failures.items()}
        assert set(reasons) == set(expected), modality
        for name, fragment in expected.items():
            assert fragment in reasons[name], (name, reasons[name])
            assert name in str(err.value)
    feats = cached(tmp_path / "c")
    assert len(feats) == 3 and np.isfinite(feats).all()  # the one good file of each modality was cached


def test_cli_on_a_data_file_and_exit_codes(media, tmp_path):
    rec = {"id": "r0", "kind": "input", "instruction": "Describe it.", "target": {"response": "x", "invocations": []},
           "media": [{"modality": "image", "path": "red.png"}, {"modality": "audio", "path": "low.wav"}]}
    data = media / "data.jsonl"
    data.write_text(json.dumps(rec) + "\n")
    assert encode.media_in([data]) == {"image": [str(media / "red.png")], "audio": [str(media / "low.wav")]}
    run = lambda *a: subprocess.run([sys.executable, "encode.py", *map(str, a), "--encoder", "tiny",  # noqa: E731
                                     "--cache-dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    ok = run(data)
    assert ok.returncode == 0, ok.stderr
    assert "image: 1 files" in ok.stdout and "audio: 1 files" in ok.stdout
    bad = run("--modality", "audio", media / "low.wav", media / "red.png")
    assert bad.returncode == 1 and f"FAILED {media / 'red.png'}" in bad.stderr
