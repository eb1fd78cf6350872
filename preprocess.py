"""I' -> the tensors ImageBind takes (encode.py's first step): imagebind.data's own transforms, with this stack's fixes.

encode.py runs ImageBind on what preprocess() returns and caches the result. Decoding media is a separate concern
from the encoder and its cache: it holds the workarounds for this package stack (soundfile instead of
torchaudio.load, pytorchvideo on a newer torchvision, glibc keeping freed video buffers), and a student replacing
the encoder (encode.py) keeps these inputs. Tests check it against the package's own loaders (tests/test_encode.py).
"""
import contextlib
import ctypes
import functools
import math
import os
import sys
import types
import warnings
from pathlib import Path

import soundfile as sf
import torch

MODALITIES = ("image", "video", "audio")
PREPROCESS_VERSION = "2"  # bump when preprocessing changes, so old cache entries are not reused
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)  # imagebind.data's


@functools.cache
def _load_package():
    """Import imagebind.data, pytorchvideo and torchvision on first use (~3.5 s): a process whose features are all
    cached (train.py, evaluate.py, probe.py after encode.py) never pays it."""
    global torchvision, ib_data, EncodedVideo
    import torchvision

    # pytorchvideo 0.1.5 (used by imagebind.data) imports a module torchvision removed in 0.17.
    sys.modules.setdefault("torchvision.transforms.functional_tensor", torchvision.transforms.functional)
    with warnings.catch_warnings():  # imagebind imports the deprecated pkg_resources and torch.jit.script_method
        warnings.simplefilter("ignore", (UserWarning, FutureWarning))
        import imagebind.data as ib_data
    from pytorchvideo.data.encoded_video import EncodedVideo

    # Scoped to imagebind.data only: the rest of the process keeps the real torchaudio.
    ib_data.torchaudio = types.SimpleNamespace(load=_load_audio, functional=ib_data.torchaudio.functional,
                                               compliance=ib_data.torchaudio.compliance)


def __getattr__(name):  # preprocess.ib_data / .EncodedVideo / .torchvision from outside load the package first
    if name in ("torchvision", "ib_data", "EncodedVideo"):
        _load_package()
        return globals()[name]
    raise AttributeError(f"module 'preprocess' has no attribute {name!r}")


def _load_audio(path):
    """torchaudio.load needs TorchCodec/FFmpeg in torchaudio 2.9+; soundfile reads WAV/FLAC/OGG without it."""
    wav, sr = sf.read(str(path), dtype="float32", always_2d=True)  # (N, C)
    if wav.shape[0] == 0:
        raise ValueError("audio file holds no samples")
    # The package's kaldi fbank asserts on audio shorter than one 25 ms window: pad it with silence.
    pad = max(0, math.ceil(0.025 * sr) - wav.shape[0])
    return torch.nn.functional.pad(torch.from_numpy(wav.T.copy()), (0, pad)), sr  # (C, N), as torchaudio.load


def preprocess(path, modality: str) -> torch.Tensor:
    """One file -> the tensor imagebind.data's own loader builds for it (without the batch dim)."""
    path = str(path)
    _load_package()
    if not os.path.isfile(path):
        raise FileNotFoundError("file not found")
    if os.path.getsize(path) == 0:
        raise ValueError("empty file (0 bytes)")
    if modality == "image":
        return ib_data.load_and_transform_vision_data([path], "cpu")[0]  # (3, 224, 224)
    # Media of at most 2 s give identical temporal clips in the package (all start at 0 s); one clip
    # gives the same embedding (the model averages over clips) 3x (audio) or 5x (video) faster.
    if modality == "audio":
        _check_wav_complete(path)
        clips = 1 if sf.info(path).duration <= 2.0 else 3
        return ib_data.load_and_transform_audio_data([path], "cpu", clips_per_video=clips)[0]  # (clips, 1, 128, 204)
    if modality == "video":
        x = _video_clips(path)
        _release_memory()  # once the decoder is gone (_video_clips returned), not while it holds its frames
        return x
    raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")


def _video_clips(path) -> torch.Tensor:
    """imagebind.data.load_and_transform_video_data for one file, from the package's own transforms. Calling
    the package would open the file again after we opened it to read the duration that picks the clips."""
    video = EncodedVideo.from_path(path, decoder="decord", decode_audio=False)
    sampler = ib_data.ConstantClipsPerVideoSampler(clip_duration=2, clips_per_video=1 if video.duration <= 2 else 5)
    frames = ib_data.pv_transforms.UniformTemporalSubsample(num_samples=2)  # the package's 2 frames per 2 s clip
    scale = torchvision.transforms.Compose([ib_data.pv_transforms.ShortSideScale(224),
                                            ib_data.NormalizeVideo(mean=CLIP_MEAN, std=CLIP_STD)])
    clips = [scale(frames(video.get_clip(start, end)["video"]) / 255.0)  # (3, 2, 224, W)
             for start, end in ib_data.get_clip_timepoints(sampler, video.duration)]
    return torch.stack(ib_data.SpatialCrop(224, num_crops=3)(clips))  # (3 * clips, 3, 2, 224, 224)


def _check_wav_complete(path):
    """libsndfile reads a truncated WAV without complaint (as a shorter clip): compare with the header."""
    data = Path(path).read_bytes()
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return  # not a WAV; soundfile decides whether it can read it
    i = 12
    while i + 8 <= len(data):  # walk the RIFF chunks to the "data" chunk
        size = int.from_bytes(data[i + 4:i + 8], "little")
        if data[i:i + 4] == b"data" and i + 8 + size > len(data):
            raise ValueError(f"truncated WAV: header declares {size} data bytes, file holds {len(data) - i - 8}")
        i += 8 + size + size % 2


def _release_memory():
    """Video decoding frees large buffers that glibc keeps; without this RSS grows by GBs over a data set."""
    with contextlib.suppress(OSError):  # not glibc (macOS, musl); no gc.collect(): ~200 ms a video, freed nothing
        ctypes.CDLL("libc.so.6").malloc_trim(0)

