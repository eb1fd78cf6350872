"""encode.py, issue 12 "Bad input never poisons training": NaN/Inf media, mixed lengths in one batch,
very short audio, and command-line mistakes."""
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

import encode
from test_encode import ROOT, cached, media, write_wav  # noqa: F401 -- `media` is a fixture


def test_non_finite_input_is_refused_and_not_cached(media, tmp_path):
    for name, value in [("nan.wav", np.nan), ("inf.wav", np.inf)]:
        sf.write(tmp_path / name, np.full(16000, value, np.float32), 16000, subtype="FLOAT")
    paths = [tmp_path / "nan.wav", media / "low.wav", tmp_path / "inf.wav"]
    with pytest.raises(encode.EncodeError) as err:
        encode.encode_files(paths, "audio", "tiny", cache_dir=tmp_path / "c", progress=False)
    assert set(err.value.failures) == {str(tmp_path / "nan.wav"), str(tmp_path / "inf.wav")}
    assert all("non-finite" in why for why in err.value.failures.values())
    feats = cached(tmp_path / "c")
    assert len(feats) == 1 and np.isfinite(feats).all()  # low.wav, and only it


def test_non_finite_model_output_is_refused_and_not_cached(media, tmp_path, monkeypatch):
    real = encode.load_encoder("tiny")

    def nan_for_the_second(inputs):  # a model that breaks down on one item of the batch
        out = real(inputs)
        out["vision"][1] = float("nan")
        return out

    monkeypatch.setattr(encode, "load_encoder", lambda *a, **k: nan_for_the_second)
    with pytest.raises(encode.EncodeError) as err:
        encode.encode_files([media / "red.png", media / "blue.png"], "image", "tiny", cache_dir=tmp_path, progress=False)
    assert list(err.value.failures) == [str(media / "blue.png")]
    assert "non-finite" in err.value.failures[str(media / "blue.png")]
    assert len(cached(tmp_path)) == 1


@pytest.mark.parametrize("modality,names", [("audio", ["low.wav", "long.wav", "low.wav"]),
                                            ("video", ["green.mp4", "long.mp4"])])
def test_mixed_lengths_in_one_batch_equal_per_file_encodings(media, tmp_path, modality, names):
    """Media up to 2 s give 1 clip, longer ones 3 (audio) or 5 (video): one batch holds both."""
    paths = [media / n for n in names]
    together = encode.encode_files(paths, modality, "tiny", cache_dir=tmp_path / "all", progress=False)
    for i, p in enumerate(paths):
        alone = encode.encode_files([p], modality, "tiny", cache_dir=tmp_path / f"one{i}", progress=False)[0]
        np.testing.assert_allclose(together[i], alone, rtol=0, atol=1e-5)


@pytest.mark.parametrize("sr", [16000, 8000])
def test_very_short_audio_is_padded_and_encoded(tmp_path, sr):
    write_wav(tmp_path / "blip.wav", 440, seconds=0.01, sr=sr)  # shorter than one 25 ms fbank window
    x = encode.encode_files([tmp_path / "blip.wav"], "audio", "tiny", cache_dir=tmp_path, progress=False)
    assert x.shape == (1, encode.embed_dim("tiny")) and np.isfinite(x).all()


def cli(capsys, *argv):
    """(exit code, what the user reads on stderr) of encode.main; any other exception fails the test."""
    try:
        code = encode.main([*map(str, argv), "--encoder", "tiny"])
    except SystemExit as e:  # SystemExit("message") prints the message alone and exits with 1
        return (1, e.code) if isinstance(e.code, str) else (e.code, capsys.readouterr().err)
    return code, capsys.readouterr().err


def test_cli_mistakes_get_one_line_messages(media, tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text('{"media": [{"modality": "image", "path": "' + str(media / "red.png") + '"}]}\n')
    a_file = tmp_path / "not_a_folder"
    a_file.write_text("x")
    cases = [([tmp_path / "missing.jsonl"], "missing.jsonl"),
             (["--modality", "image", media / "red.png", tmp_path / "missing.png"], "missing.png"),
             ([data, "--cache-dir", a_file], "not_a_folder"),
             ([data, "--batch-size", 0], "--batch_size"),
             ([data, "--batch_size", -3], "--batch_size")]
    for argv, named in cases:
        code, err = cli(capsys, *argv, *([] if "--cache-dir" in argv else ["--cache-dir", tmp_path / "c"]))
        assert code not in (0, None) and named in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert not (tmp_path / "c").exists()  # refused before anything was encoded


def test_cli_missing_data_file_has_no_traceback(tmp_path):
    run = subprocess.run([sys.executable, "encode.py", str(tmp_path / "nope.jsonl"), "--encoder", "tiny"],
                         cwd=ROOT, capture_output=True, text=True)
    assert run.returncode != 0 and "Traceback" not in run.stderr and "nope.jsonl" in run.stderr, run.stderr
