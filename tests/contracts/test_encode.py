"""Contract of encode.py (ImageBind I' of Eq. 1): what train.py, chat.py and evaluate.py rely on.

A rewrite of encode.py passes this if and only if the other stages still work with it: encode_files gives one
finite float32 row of embed_dim(encoder) per path, in order, the same for the same file; the cache is read
without loading the encoder; a bad file raises EncodeError naming it; and `python encode.py DATA.jsonl
--encoder tiny --cache_dir DIR` (the command train.py prints for missing features) fills the cache that train.py
then reads without encoding anything.
"""
import numpy as np
import pytest

import encode
import train

from .helpers import COLOURS, write_png, write_records, write_wav

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    for name, rgb in COLOURS.items():
        write_png(d / f"{name}.png", rgb)
    write_wav(d / "low.wav", 220)
    write_wav(d / "high.wav", 1760)
    return d


def no_encoder(*args, **kwargs):
    raise AssertionError("features in the cache must be read, not encoded again (load_encoder was called)")


def test_names_the_other_stages_use():
    assert set(encode.MODALITIES) == {"image", "video", "audio"}
    assert "tiny" in encode.ENCODERS and isinstance(encode.embed_dim("tiny"), int) and encode.embed_dim("tiny") > 0
    assert issubclass(encode.EncodeError, Exception)


def test_one_row_per_path_in_order_then_from_the_cache(media, tmp_path, monkeypatch):
    images = [media / "red.png", media / "blue.png", media / "red.png", media / "green.png"]
    x = encode.encode_files(images, "image", "tiny", cache_dir=str(tmp_path), progress=False)
    assert x.shape == (4, encode.embed_dim("tiny")) and x.dtype == np.float32 and np.isfinite(x).all()
    np.testing.assert_array_equal(x[0], x[2])  # the same file, the same row
    assert np.abs(x[0] - x[1]).max() > 1e-4 and np.abs(x[1] - x[3]).max() > 1e-4  # different files differ
    audio = encode.encode_files([media / "high.wav", media / "low.wav"], "audio", "tiny", cache_dir=str(tmp_path),
                                progress=False)
    assert audio.shape == (2, encode.embed_dim("tiny")) and np.isfinite(audio).all()

    monkeypatch.setattr(encode, "load_encoder", no_encoder)  # a second call reads the cache only
    again = encode.encode_files(images[::-1], "image", "tiny", cache_dir=str(tmp_path), progress=False)
    np.testing.assert_array_equal(again, x[::-1])  # rows follow the order asked, not the order cached
    swapped = encode.encode_files([media / "low.wav", media / "high.wav"], "audio", "tiny", cache_dir=str(tmp_path),
                                  progress=False)
    np.testing.assert_array_equal(swapped, audio[::-1])


def test_a_missing_file_raises_encode_error_naming_it(media, tmp_path):
    missing = media / "no-such.png"
    with pytest.raises(encode.EncodeError) as err:
        encode.encode_files([media / "red.png", missing], "image", "tiny", cache_dir=str(tmp_path), progress=False)
    assert str(missing) in str(err.value) and "red.png" not in str(err.value)


def test_cli_fills_the_cache_that_train_reads(tmp_path, monkeypatch, capsys):
    data = write_records(tmp_path, "train", 4)
    cache = str(tmp_path / "cache")
    assert encode.main([str(data), "--encoder", "tiny", "--cache_dir", cache]) == 0
    monkeypatch.setattr(encode, "load_encoder", no_encoder)  # train must find every feature in the cache
    out = tmp_path / "run"
    train.main(["--preset", "tiny", "--data", str(data), "--val_data", "", "--cache_dir", cache, "--out_dir", str(out),
                "--max_steps", "1", "--batch_size", "2", "--micro_batch", "2", "--no-encode_missing"])
    assert (out / "adapter.safetensors").is_file()
