"""The toy data set's media: the attribute vocabularies and the PNG / WAV / MP4 writers of data/make_toy.py.

Every media item is drawn from a few attributes that a *random* ImageBind still carries (image/video colour and
shape, video direction; audio pitch, waveform, rhythm: data/README.md §4), each file from its own RNG stream, so
the same seed writes byte-identical files. make_toy.py builds the records on top of these files; this file
imports nothing of ours.
"""
import wave
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw

SPLITS = ("train", "val", "test")  # media files, like records, belong to one split
SIZE, SAMPLE_RATE, SECONDS, FPS = 224, 16000, 2.0, 10   # image/video side, audio rate, clip length, video fps

# Attribute vocabularies. The words are the ones the targets use.
COLOURS = {"red": (215, 40, 40), "orange": (245, 140, 25), "yellow": (235, 210, 35), "green": (45, 160, 65),
           "blue": (40, 85, 220), "purple": (130, 55, 190), "pink": (245, 125, 195), "brown": (125, 80, 40)}
SHAPES = ("circle", "square", "triangle")          # few and very distinct: a random encoder carries shape only partly
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
PITCHES = {"very low": 110.0, "low": 220.0, "medium": 440.0, "high": 880.0, "very high": 1760.0}  # Hz, octaves
WAVEFORMS = ("sine", "square", "sawtooth")
RHYTHMS = {"steady": "held steady", "two beeps": "in two beeps", "four beeps": "in four beeps"}


def a(phrase: str) -> str:
    """'orange kite' -> 'an orange kite'."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def attribute_grid(values: dict[str, tuple], j: int) -> dict[str, str]:
    """Attributes of the j-th item: a bijection of j mod the product, first attribute varying fastest.

    Each digit is shifted by the digits before it, so a short run of items already varies every attribute
    (a plain odometer would keep the slow attributes fixed in the small preset)."""
    out, shift, rest = {}, 0, j
    for name, vals in values.items():
        digit = rest % len(vals)
        rest //= len(vals)
        out[name] = vals[(digit + shift) % len(vals)]
        shift += digit
    return out


def shape_polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Corners of a square or triangle of circumradius r, rotated by angle (radians)."""
    n = {"square": 4, "triangle": 3}[shape]
    start = -np.pi / 2 + (np.pi / 4 if n == 4 else 0.0)
    return [(cx + r * np.cos(start + angle + 2 * np.pi * k / n), cy + r * np.sin(start + angle + 2 * np.pi * k / n))
            for k in range(n)]


def draw_frame(colour: tuple, shape: str, cx: float, cy: float, r: float, angle: float, bg: int) -> np.ndarray:
    """(SIZE, SIZE, 3) uint8 frame; drawn at 2x and downsampled so edges are anti-aliased."""
    img = Image.new("RGB", (2 * SIZE, 2 * SIZE), (bg, bg, bg))
    d = ImageDraw.Draw(img)
    if shape == "circle":
        d.ellipse([2 * (cx - r), 2 * (cy - r), 2 * (cx + r), 2 * (cy + r)], fill=colour)
    else:
        d.polygon([(2 * x, 2 * y) for x, y in shape_polygon(shape, cx, cy, r, angle)], fill=colour)
    return np.asarray(img.reduce(2))  # 2x2 box filter: cheap anti-aliasing


def jitter_colour(rng: np.random.Generator, name: str) -> tuple[int, int, int]:
    return tuple(int(c) for c in np.clip(np.array(COLOURS[name]) + rng.integers(-12, 13, 3), 0, 255))


def make_image(path: Path, attrs: dict, rng: np.random.Generator) -> None:
    """A large, roughly centred shape (FACTS.md: shape survives a random encoder best that way)."""
    cx, cy = SIZE / 2 + rng.uniform(-12, 12, 2)
    r = rng.uniform(62, 80)
    frame = draw_frame(jitter_colour(rng, attrs["colour"]), attrs["shape"], cx, cy, r,
                       rng.uniform(-0.25, 0.25), int(rng.integers(235, 256)))
    Image.fromarray(frame).save(path)


def make_audio(path: Path, attrs: dict, rng: np.random.Generator) -> None:
    """A tone: pitch (octaves), waveform (band-limited harmonics), rhythm (steady / 2 / 4 beeps)."""
    t = np.arange(int(SAMPLE_RATE * SECONDS)) / SAMPLE_RATE
    f0 = PITCHES[attrs["pitch"]] * rng.uniform(0.985, 1.015)
    harmonics = {"sine": [1], "square": range(1, 40, 2), "sawtooth": range(1, 40)}[attrs["waveform"]]
    x = sum(np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi)) / k
            for k in harmonics if k * f0 < SAMPLE_RATE / 2)
    x /= np.abs(x).max()
    beeps = {"steady": 1, "two beeps": 2, "four beeps": 4}[attrs["rhythm"]]
    period = SECONDS / beeps
    on = 0.96 * SECONDS if beeps == 1 else 0.55 * period
    start = (t + rng.uniform(0, 0.02)) % period
    ramp = 0.01  # 10 ms fades avoid clicks
    env = np.clip(np.minimum(start, on - start) / ramp, 0, 1) * (start < on)
    x = x * env * rng.uniform(0.35, 0.6) + rng.normal(0, 0.003, t.shape)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)  # 16-bit PCM
        w.setframerate(SAMPLE_RATE)
        w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())


def make_video(path: Path, attrs: dict, rng: np.random.Generator) -> None:
    """A shape crossing the frame in one direction, SECONDS long at FPS, H.264 in MP4."""
    dx, dy = DIRECTIONS[attrs["direction"]]
    colour, bg = jitter_colour(rng, attrs["colour"]), int(rng.integers(235, 256))
    r, angle, travel = rng.uniform(38, 46), rng.uniform(-0.25, 0.25), rng.uniform(95, 115)
    c0 = SIZE / 2 - travel / 2 * np.array([dx, dy]) + rng.uniform(-8, 8, 2)
    n = int(FPS * SECONDS)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("h264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = SIZE, SIZE, "yuv420p"
        # Byte-identical output across runs needs one thread and no macroblock-tree rate control: with mbtree,
        # this x264 build gave a different stream for ~1 in 30 clips (same frames, same process).
        stream.codec_context.thread_count = 1
        stream.options = {"crf": "23", "x264-params": "mbtree=0"}
        for i in range(n):
            cx, cy = c0 + travel * i / (n - 1) * np.array([dx, dy])
            frame = av.VideoFrame.from_ndarray(draw_frame(colour, attrs["shape"], cx, cy, r, angle, bg), "rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


MEDIA = {  # modality -> (folder, extension, attributes, writer, caption)
    "image": ("images", "png", {"colour": tuple(COLOURS), "shape": SHAPES}, make_image,
              lambda m: a(f"{m['colour']} {m['shape']}")),
    "audio": ("audio", "wav", {"pitch": tuple(PITCHES), "waveform": WAVEFORMS, "rhythm": tuple(RHYTHMS)},
              make_audio, lambda m: a(f"{m['pitch']} {m['waveform']} tone {RHYTHMS[m['rhythm']]}")),
    "video": ("videos", "mp4", {"colour": tuple(COLOURS), "shape": SHAPES, "direction": tuple(DIRECTIONS)},
              make_video, lambda m: a(f"{m['colour']} {m['shape']} moving {m['direction']}")),
}


def make_media(out: Path, counts: dict[str, tuple[int, int, int]], seed: int) -> list[dict]:
    """Write every media file, counts[modality] of them per split (train, val, test); returns the media.jsonl
    rows. Each item has its own RNG stream."""
    rows = []
    for m, (folder, ext, values, writer, caption) in MEDIA.items():
        (out / folder).mkdir(parents=True, exist_ok=True)
        splits = [s for s, n in zip(SPLITS, counts[m]) for _ in range(n)]
        for j, split in enumerate(splits):
            attrs = attribute_grid(values, j)
            path = f"{folder}/{m[0]}{j:04d}.{ext}"
            writer(out / path, attrs, np.random.default_rng([seed, list(MEDIA).index(m), j]))
            rows.append({"path": path, "modality": m, "split": split, "caption": caption(attrs), "attributes": attrs})
    return rows
