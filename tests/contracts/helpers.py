"""Tiny media files (PNG, WAV) and JSON Lines records over them (data/README.md), written by the tests: nothing
is downloaded, and any encoder can read them."""
import json

import numpy as np
import soundfile as sf
from PIL import Image

COLOURS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220), "yellow": (220, 220, 20)}


def write_png(path, rgb):
    Image.fromarray(np.broadcast_to(np.array(rgb, np.uint8), (32, 32, 3)).copy()).save(path)


def write_wav(path, freq, seconds=0.5, sr=16000):
    sf.write(path, (0.5 * np.sin(2 * np.pi * freq * np.arange(int(seconds * sr)) / sr)).astype(np.float32), sr)


def write_records(root, name, n):
    """root/name.jsonl: n records (data/README.md) asking for a picture of an image's colour; every third one
    also has a sound. The media files are real (PNG, WAV), so any encoder can read them."""
    (root / "media").mkdir(exist_ok=True)
    lines = []
    for i in range(n):
        colour = list(COLOURS)[i % len(COLOURS)]
        write_png(root / "media" / f"{name}-{i}.png", COLOURS[colour])
        media = [{"modality": "image", "path": f"media/{name}-{i}.png"}]
        if i % 3 == 0:
            write_wav(root / "media" / f"{name}-{i}.wav", 220 * (i + 1))
            media.append({"modality": "audio", "path": f"media/{name}-{i}.wav"})
        lines.append({"id": f"{name}-{i}", "kind": "output", "instruction": "Draw something of the same colour.",
                      "media": media, "target": {"response": "Here it is.", "invocations": [
                          {"model": "text-to-image", "prompt": f"a {colour} kite"}]}})
    path = root / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path
