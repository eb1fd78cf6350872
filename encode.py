"""ImageBind(I') of the paper's Eq. (1): encode images, videos and audio, cache the features.

ModaVerse feeds every input medium through a frozen ImageBind encoder (Girdhar et al. 2023) and then
through a trainable linear projector (project.py). The encoder never changes during training, so we
run it once per file and cache its embedding; train.py and chat.py read the cache. Media are decoded into
ImageBind's input tensors by preprocess.py (the package's own transforms).

Encoders (ENCODERS below):
  huge  the paper's `imagebind_huge` (1024-d). Weights: --encoder_checkpoint FILE (nothing is downloaded), or
        the package downloads them to .checkpoints/imagebind_huge.pth on first use (needs internet):
        https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth (CC BY-NC-SA 4.0: non-commercial)
  toy   a random, seeded 256-wide ImageBind (512-d): the offline demo. NOT a trained encoder.
  tiny  a random, seeded 64-wide ImageBind (512-d): the tests.

Cache (data/store.py): <cache_dir>/<encoder id>/store/, shards of packed rows found by content key
(sha256 of the file's bytes + modality + encoder id). The encoder id hashes the encoder's config, seed,
weights file and preprocessing, so a changed file or a different encoder never returns a stale embedding.
A file's hash is computed once and found again by (path, size, mtime): a restart reads no media. The older
per-file cache <cache_dir>/<encoder id>/<modality>/<sha256>.npy is still read (python -m data.store pack).

  python encode.py data/toy/train.jsonl data/toy/test.jsonl --encoder toy   # media of data files
  python encode.py --modality image cat.png dog.png --encoder huge          # a list of files
  python probe.py data/toy/media.jsonl --encoder toy                        # what the features carry
  python encode.py --encoder huge --device cuda data/train.jsonl            # on a GPU
  python encode.py --encoder huge --encoder_checkpoint .checkpoints/imagebind_huge.pth data/train.jsonl
"""
import argparse
import contextlib
import functools
import hashlib
import json
import os
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from data.store import StoreBusy, locate as store_locate, read_located  # the packed cache; imports no stage
from preprocess import MODALITIES, PREPROCESS_VERSION, _load_package, preprocess  # I' -> ImageBind's input tensors

IB_KEY = {"image": "vision", "video": "vision", "audio": "audio"}  # ImageBind's names


@dataclass(frozen=True)
class EncoderConfig:
    width: int  # every tower's width (ImageBind's *_embed_dim); 0 = the paper's imagebind_huge
    blocks: int
    heads: int
    out_dim: int
    seed: int = 0


ENCODERS = {
    "tiny": EncoderConfig(width=64, blocks=2, heads=4, out_dim=512),
    "toy": EncoderConfig(width=256, blocks=4, heads=4, out_dim=512),
    "huge": EncoderConfig(width=0, blocks=0, heads=0, out_dim=1024),
}


def embed_dim(encoder: str) -> int:
    return ENCODERS[encoder].out_dim


# ---------------------------------------------------------------- the encoder
def encoder_id(encoder: str, checkpoint: str | None = None) -> str:
    """A name for the cache folder that changes whenever the embeddings could change."""
    cfg = ENCODERS[encoder]
    ident = {"cfg": asdict(cfg), "preprocess": PREPROCESS_VERSION, "torch": torch.__version__.split("+")[0]}
    if checkpoint:
        st = os.stat(checkpoint)
        ident["checkpoint"] = [os.path.abspath(checkpoint), st.st_size, st.st_mtime_ns]
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]
    return f"{encoder}-{digest}"


def _check_checkpoint(checkpoint: str | None):
    if checkpoint and not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"encoder checkpoint {checkpoint}: no such file (imagebind_huge.pth, see encode.py)")


@functools.lru_cache(maxsize=2)
def load_encoder(encoder: str = "tiny", checkpoint: str | None = None, device: str = "cpu"):
    cfg = ENCODERS[encoder]
    _check_checkpoint(checkpoint)  # before building (huge: ~1.2B weights) or downloading
    _load_package()  # the package, with this stack's fixes; only here: a run whose features are cached never needs it
    with warnings.catch_warnings():  # imagebind imports the deprecated pkg_resources and torch.jit.script_method
        warnings.simplefilter("ignore", (UserWarning, FutureWarning))
        from imagebind.models import imagebind_model
    if cfg.width == 0:  # with a local checkpoint the package downloads nothing (pretrained=False)
        try:
            model = imagebind_model.imagebind_huge(pretrained=checkpoint is None)
        except OSError as e:  # urllib's URLError is one: offline, or the URL moved
            raise OSError(f"could not download imagebind_huge ({e}): download the file yourself (README) and pass "
                          "--encoder_checkpoint FILE") from e
    else:
        print(f"encode.py: '{encoder}' is an UNTRAINED ImageBind (random weights, seed {cfg.seed}): "
              "its features carry only what a random network keeps (see README).", file=sys.stderr)
        w, b, h = cfg.width, cfg.blocks, cfg.heads
        with torch.random.fork_rng(devices=[]):  # same weights every time, global RNG untouched
            torch.manual_seed(cfg.seed)
            model = imagebind_model.ImageBindModel(
                out_embed_dim=cfg.out_dim, vision_embed_dim=w, vision_num_blocks=b, vision_num_heads=h,
                audio_embed_dim=w, audio_num_blocks=b, audio_num_heads=h, text_embed_dim=w,
                text_num_blocks=b, text_num_heads=h, depth_embed_dim=w, depth_num_blocks=1,
                depth_num_heads=h, thermal_embed_dim=w, thermal_num_blocks=1, thermal_num_heads=h,
                imu_embed_dim=w, imu_num_blocks=1, imu_num_heads=h)
    if checkpoint:  # tensors only (weights_only): a .pth from the internet runs no code
        model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    return model.eval().requires_grad_(False).to(device)


class EncodeError(RuntimeError):
    """Some files could not be encoded; `failures` maps each path to the reason. The rest are cached."""

    def __init__(self, failures: dict):
        self.failures = failures
        lines = "\n".join(f"  {p}: {why}" for p, why in failures.items())
        super().__init__(f"{len(failures)} file(s) could not be encoded:\n{lines}")


def locate(paths, modality: str, encoder="tiny", cache_dir=".cache/features", checkpoint=None, dtype="float32"):
    """data.store.locate for this encoder: (store, keys, rows, legacy, failures); reads no media bytes for files
    hashed before. dtype applies to a new store only."""
    return store_locate(paths, modality, encoder_id(encoder, checkpoint), embed_dim(encoder), cache_dir, dtype)


@torch.inference_mode()
def ensure_cached(paths, modality: str, encoder: str = "tiny", cache_dir=".cache/features",
                  checkpoint: str | None = None, batch_size: int = 32, device: str = "cpu", progress: bool = True,
                  dtype: str = "float32"):
    """Encode what the cache lacks into the packed store; return locate()'s (store, keys, rows, legacy).

    Files that fail (missing, empty, unreadable, not the named modality, non-finite) are reported all
    together in an EncodeError raised after every good file has been encoded and committed.
    """
    if modality not in MODALITIES or batch_size < 1:
        raise ValueError(f"modality {modality!r} (one of {MODALITIES}), batch_size {batch_size} (at least 1)")
    _check_checkpoint(checkpoint)  # else every file would fail with "cannot read"
    store, keys, rows, legacy, failures = locate(paths, modality, encoder, cache_dir, checkpoint, dtype)
    todo = list(dict.fromkeys(p for i, p in enumerate(map(str, paths)) if rows[i] < 0 and i not in legacy
                              and p not in failures))
    bar = tqdm(total=len(todo), desc=f"encode {modality}", unit="file", disable=not progress or not todo)
    with contextlib.ExitStack() as stack:
        writer = stack.enter_context(store.writer()) if todo else None  # StoreBusy if another run writes
        for i in range(0, len(todo), batch_size):
            by_shape = {}  # {input shape: {path: input}}: longer audio and video have more clips
            for p in todo[i:i + batch_size]:
                bar.update(1)
                try:
                    x = preprocess(p, modality)
                    by_shape.setdefault(x.shape, {})[p] = x
                except Exception as e:  # noqa: BLE001 -- any decoder error means "this file is bad"
                    failures[p] = f"not a readable {modality} file: {e}" if isinstance(e, ValueError) else \
                        f"not a readable {modality} file ({type(e).__name__}: {e})"
            for group in by_shape.values():
                model = load_encoder(encoder, checkpoint, device)  # built on first use only (lru_cache)
                x = torch.stack(list(group.values())).to(device)  # image (B,3,224,224); audio/video (B, clips, ...)
                emb = model({IB_KEY[modality]: x})[IB_KEY[modality]].float().cpu().numpy()  # (B, D)
                # a NaN input can come out finite but meaningless; items never mix, so the others stay good
                finite = x.flatten(1).isfinite().all(1).cpu().numpy() & np.isfinite(emb.astype(store.dtype)).all(1)
                for p in np.array(list(group))[~finite]:  # or a value past float16's range, in a float16 store
                    failures[p] = "non-finite feature (NaN/Inf in the input or the model output)"
                writer.add([keys[p] for p in np.array(list(group))[finite]], emb[finite])
    bar.close()
    if failures:
        raise EncodeError(failures)
    if todo:
        rows = np.where(rows < 0, store.lookup([keys[str(p)] for p in paths]), rows)
    return store, keys, rows, legacy


def encode_files(paths, modality: str, encoder: str = "tiny", cache_dir=".cache/features", checkpoint=None,
                 batch_size: int = 32, device: str = "cpu", progress: bool = True, dtype="float32") -> np.ndarray:
    """Embeddings (N, D) float32 for `paths`, from the cache or freshly encoded (ensure_cached)."""
    store, _, rows, legacy = ensure_cached(paths, modality, encoder, cache_dir, checkpoint, batch_size, device,
                                           progress, dtype)
    return read_located(store, rows, legacy)


# ---------------------------------------------------------------- data files
def media_in(data_files) -> dict:
    """{modality: [paths]} of every media item in JSON Lines files: records with a "media" list
    (data/README.md) or media listings with "path" + "modality". Paths are relative to each file."""
    found = {m: [] for m in MODALITIES}
    for f in data_files:
        root = Path(f).parent
        with open(f, "rb") as fh:  # JSON Lines: lines end at b"\n" only; a UTF-8 BOM and CRLF are fine
            for n, raw in enumerate(fh, 1):
                try:
                    line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
                    rec = json.loads(line) if line.strip() else {}
                    items = rec["media"] if "media" in rec else [rec] if "path" in rec else []
                    for item in items:
                        found[item["modality"]].append(str(root / item["path"]))
                except UnicodeDecodeError:
                    raise SystemExit(f"{f}:{n}: not UTF-8 text (a binary file?): give a JSON Lines data file")
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise SystemExit(f"{f}:{n}: not a data record ({type(e).__name__}: {e})")
    return {m: list(dict.fromkeys(ps)) for m, ps in found.items() if ps}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("inputs", nargs="*", help="JSON Lines data files (or media files with --modality)")
    ap.add_argument("--modality", choices=MODALITIES, help="treat inputs as media files of this modality")
    ap.add_argument("--encoder", choices=sorted(ENCODERS), default="toy", help="which ImageBind (default: toy)")
    ap.add_argument("--encoder_checkpoint", "--checkpoint", metavar="FILE",
                    help="a local file of the encoder's weights (huge: imagebind_huge.pth; nothing is downloaded)")
    ap.add_argument("--cache_dir", "--cache-dir", default=".cache/features", help="where the feature store goes")
    ap.add_argument("--store_dtype", "--store-dtype", choices=("float32", "float16"), default="float32",
                    help="dtype of a NEW store (float16 halves the disk; an existing store keeps its own)")
    ap.add_argument("--batch_size", "--batch-size", type=int, default=32, help="files per forward pass")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="default: cuda if any")
    args = ap.parse_args(argv)
    if args.batch_size < 1:
        raise SystemExit(f"encode.py: --batch_size must be at least 1 (got {args.batch_size})")
    if args.encoder_checkpoint and not os.path.isfile(args.encoder_checkpoint):
        raise SystemExit(f"encode.py: --encoder_checkpoint {args.encoder_checkpoint}: no such file; give the path of "
                         "the downloaded weights (imagebind_huge.pth)")
    missing = [p for p in args.inputs if not os.path.isfile(p)]
    if missing:
        raise SystemExit(f"encode.py: no such file: {', '.join(missing)}; check the path")
    try:
        Path(args.cache_dir).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SystemExit(f"encode.py: --cache_dir {args.cache_dir}: not a folder ({e.strerror}); give a folder path")
    kw = dict(encoder=args.encoder, cache_dir=args.cache_dir, checkpoint=args.encoder_checkpoint,
              batch_size=args.batch_size, device=args.device, dtype=args.store_dtype)
    if not args.inputs:
        ap.error("give data files, or media files with --modality")
    groups = {args.modality: args.inputs} if args.modality else media_in(args.inputs)
    failed = {}
    for modality, paths in groups.items():
        try:
            store = ensure_cached(paths, modality, **kw)[0]
            print(f"{modality}: {len(set(paths))} files -> {store.folder}")
        except StoreBusy as e:
            raise SystemExit(f"encode.py: {e}")
        except EncodeError as e:
            failed.update(e.failures)
            print(f"{modality}: {len(set(paths)) - len(e.failures)} files encoded, {len(e.failures)} failed")
        except OSError as e:  # the encoder's weights: not found, not downloadable
            raise SystemExit(f"encode.py: {e}") from None
    for p, why in failed.items():
        print(f"FAILED {p}: {why}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
