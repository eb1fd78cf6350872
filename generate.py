r"""M of the paper's Eq. (1): read the meta-response O2, run the text-to-x model zoo M, save O'.

The fine-tuned LLM answers with a meta-response: a text reply plus invocations (model name, prompt) of
pretrained generators (Fig. 3, "final response generation"). parse_meta_response (meta_response.py: its JSON,
flag and tuple formats) turns whatever the LLM wrote into a MetaResponse without evaluating it as code;
generate calls diffusers pipelines directly and writes PNG / MP4 / WAV files under names it chooses.

Model zoo (ZooConfig: each checkpoint is a hub id, a local folder, or "tiny"):
  text-to-image  stable-diffusion-v1-5/stable-diffusion-v1-5  StableDiffusionPipeline (runwayml/... was removed)
  text-to-video  ali-vilab/text-to-video-ms-1.7b   TextToVideoSDPipeline, DPM-Solver++ as the official code
  text-to-audio  cvssp/audioldm-l-full             AudioLDMPipeline (the official config's AudioLDM)
  tiny           seeded random pipelines of the same classes, built from configs (zoo_tiny.py: tests, offline runs)

  python generate.py --zoo tiny --out outputs/ \
      '{"response": "Here.", "invocations": [{"model": "text-to-image", "prompt": "a cat"}]}'  # CPU, offline
  python generate.py 'Modality: [VIDEO] Prompt: a dog running ###' --out outputs/   # paper zoo, one GPU
  python generate.py - --text_to_audio /models/audioldm-s-full-v2 < reply.txt      # meta-response from stdin
  python generate.py --predictions out/toy/test_predictions.jsonl --limit 3 --zoo tiny --out outputs/toy
"""
import argparse
import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from meta_response import MODELS, Invocation, MetaResponse, parse_meta_response  # noqa: F401 (O2; Invocation for callers)
from predictions import read_predictions, record_folder  # the file evaluate.py --save_predictions writes

OUTPUT_FIELD = {"text-to-image": "images", "text-to-video": "frames", "text-to-audio": "audios"}


# ----------------------------------------------------------------------------- model zoo M
def _opt(default, help: str, **extra):
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class ZooConfig:
    text_to_image: str = _opt("stable-diffusion-v1-5/stable-diffusion-v1-5",
                              "checkpoint: hub id, local folder or 'tiny'")
    text_to_video: str = _opt("ali-vilab/text-to-video-ms-1.7b", "checkpoint: hub id, local folder or 'tiny'")
    text_to_audio: str = _opt("cvssp/audioldm-l-full", "checkpoint: hub id, local folder or 'tiny'")
    device: str = _opt("auto", "cuda when available, else cpu")
    dtype: str = _opt("auto", "auto = float16 on GPU (official code), float32 on CPU",
                      choices=["auto", "float32", "float16", "bfloat16"])
    seed: int = _opt(0, "invocation i uses seed + i")
    image_steps: int = _opt(50, "denoising steps (StableDiffusionPipeline's default)", positive=True)
    image_guidance: float = _opt(7.5, "classifier-free guidance scale")
    image_size: int = _opt(512, "height = width in pixels (multiple of 8)", positive=True, multiple=8)
    video_steps: int = _opt(25, "denoising steps (official code)", positive=True)
    video_guidance: float = _opt(9.0, "classifier-free guidance scale")
    video_size: int = _opt(256, "height = width in pixels (multiple of 8)", positive=True, multiple=8)
    video_frames: int = _opt(16, "frames per video", positive=True)
    video_fps: int = _opt(8, "frames per second of the MP4", positive=True)
    audio_steps: int = _opt(10, "denoising steps (official code)", positive=True)
    audio_guidance: float = _opt(2.5, "classifier-free guidance scale")
    audio_seconds: float = _opt(5.0, "audio length in seconds (official code)", positive=True)

    def __post_init__(self):
        """Refuse, not repair, values a pipeline would misuse: --image-steps -1 used to write a PNG anyway."""
        for f in dataclasses.fields(self):
            v, k = getattr(self, f.name), f.metadata.get("multiple")
            must = ("finite" if isinstance(v, float) and not math.isfinite(v) else
                    "> 0" if f.metadata.get("positive") and not v > 0 else
                    f"a multiple of {k}" if k and v % k else None)
            if must:
                raise ValueError(f"--{f.name.replace('_', '-')} {v}: must be {must} (paper: {f.default})")
        for model in MODELS:  # a path (not a hub id) that is not there: said now, not after other pipelines load
            ckpt = getattr(self, model.replace("-", "_"))
            if ckpt.startswith(("/", "./", "../", "~")) and not os.path.isdir(os.path.expanduser(ckpt)):
                raise ValueError(f"--{model} {ckpt}: no such folder (a diffusers pipeline saved with save_pretrained)")


PRESETS = {
    "paper": ZooConfig(),
    "tiny": ZooConfig(text_to_image="tiny", text_to_video="tiny", text_to_audio="tiny", dtype="float32",
                      image_steps=2, image_size=32, video_steps=2, video_size=32, video_frames=4,
                      audio_steps=2, audio_seconds=0.064),
}


class ModelZoo:
    """M: one pipeline per model name, loaded on first use and kept for the next invocation."""

    def __init__(self, cfg: ZooConfig):
        import torch  # torch and diffusers load only when a pipeline is needed: parsing stays light

        self.cfg, self.pipelines = cfg, {}
        self.device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = cfg.dtype if cfg.dtype != "auto" else ("float16" if self.device.startswith("cuda") else "float32")
        self.dtype = getattr(torch, dtype)

    def checkpoint(self, model: str) -> str:
        return getattr(self.cfg, model.replace("-", "_"))  # "text-to-image" -> cfg.text_to_image

    def pipeline(self, model: str):
        if model not in self.pipelines:
            self.pipelines[model] = self._load(model)
        return self.pipelines[model]

    def _load(self, model: str):
        from diffusers import DiffusionPipeline

        ckpt = self.checkpoint(model)
        if ckpt == "tiny":
            from zoo_tiny import tiny_pipeline  # test scaffolding, loaded only when asked for

            pipe = tiny_pipeline(model)
        else:
            try:  # model_index.json names the class, so a swapped checkpoint needs no code change (plug-and-play)
                pipe = DiffusionPipeline.from_pretrained(ckpt, dtype=self.dtype)
            except (OSError, ValueError) as e:
                raise OSError(f"cannot load {model} from {ckpt!r}: {e}\nWithout network or downloaded weights, pass "
                              f"--zoo tiny (random tiny pipelines) or --{model.replace('-', '_')} /local/folder") from e
            if model == "text-to-video":  # the official code samples ModelScope T2V with DPM-Solver++ (25 steps)
                from diffusers import DPMSolverMultistepScheduler

                pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=ckpt == "tiny")
        pipe = pipe.to(self.device)  # (tiny pipelines are built in float32; from_pretrained already cast)
        return pipe if pipe.dtype == self.dtype else pipe.to(dtype=self.dtype)

    def settings(self, model: str) -> dict:
        """The pipeline's keyword arguments for `model`, also stored in the JSON record."""
        c = self.cfg
        return {"text-to-image": dict(num_inference_steps=c.image_steps, guidance_scale=c.image_guidance,
                                      height=c.image_size, width=c.image_size),
                "text-to-video": dict(num_inference_steps=c.video_steps, guidance_scale=c.video_guidance,
                                      height=c.video_size, width=c.video_size, num_frames=c.video_frames),
                "text-to-audio": dict(num_inference_steps=c.audio_steps, guidance_scale=c.audio_guidance,
                                      audio_length_in_s=c.audio_seconds)}[model]

    def __call__(self, model: str, prompt: str, seed: int) -> np.ndarray:
        """image (H, W, 3) / video (F, H, W, 3) in [0, 1]; audio (samples,) at the vocoder's rate."""
        import torch

        pipe, generator = self.pipeline(model), torch.Generator(self.device).manual_seed(seed)
        with torch.inference_mode():
            out = pipe(prompt, generator=generator, output_type="np", **self.settings(model))
        # Stable Diffusion's safety checker returns a black image for what it flags; generate() records it.
        # None: this pipeline has no checker (the tiny ones, video, audio)
        self.blanked = (getattr(out, "nsfw_content_detected", None) or [None])[0]
        return np.asarray(getattr(out, OUTPUT_FIELD[model])[0], dtype=np.float32)


# ----------------------------------------------------------------------------- final response O'
def _to_uint8(x: np.ndarray) -> np.ndarray:
    return (np.clip(np.nan_to_num(x), 0, 1) * 255).round().astype(np.uint8)


@contextlib.contextmanager
def _atomic(path: Path):
    """A temporary name to write to that becomes `path` only once written whole: a crash leaves no partial file."""
    tmp = path.with_name(f".tmp-{path.name}")  # same folder (one file system), same suffix (the file format)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write(path: Path, model: str, output: np.ndarray, zoo: ModelZoo) -> dict:
    """Save one output in a format people open; return what a reader needs to check it."""
    if model == "text-to-image":
        from PIL import Image

        Image.fromarray(_to_uint8(output)).save(path)
        return {"height": output.shape[0], "width": output.shape[1]}
    if model == "text-to-video":
        import av

        frames = _to_uint8(output)  # (F, H, W, 3); H.264 in yuv420p needs even sizes (SD sizes are multiples of 8)
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264", rate=zoo.cfg.video_fps)
            stream.height, stream.width, stream.pix_fmt = frames.shape[1], frames.shape[2], "yuv420p"
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())  # flush the encoder
        return {"frames": len(frames), "height": frames.shape[1], "width": frames.shape[2], "fps": zoo.cfg.video_fps}
    import soundfile

    rate = zoo.pipeline(model).vocoder.config.sampling_rate
    soundfile.write(path, np.clip(np.nan_to_num(output), -1, 1), rate, subtype="PCM_16")
    return {"samples": len(output), "sample_rate": rate}


def generate(meta: MetaResponse | str, out_dir: str, zoo: ModelZoo) -> list[dict]:
    """Run every invocation of O2 through M; write the files and out_dir/generated.json; return the records."""
    meta = parse_meta_response(meta) if isinstance(meta, str) else meta
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i, inv in enumerate(meta.invocations):
        if inv.model not in MODELS:
            raise ValueError(f"unknown model {inv.model!r} (known: {', '.join(MODELS)})")
        # The name is ours (index + a model name from MODELS): no text from the LLM chooses where a file goes.
        path, seed, t0 = out / f"{i:02d}-{inv.model}.{MODELS[inv.model]}", zoo.cfg.seed + i, time.perf_counter()
        zoo.blanked = None
        with _atomic(path) as tmp:
            info = _write(tmp, inv.model, zoo(inv.model, inv.prompt, seed), zoo)
        if zoo.blanked is not None:  # a checker ran: tell the reader whether the image is black because it flagged it
            info["blanked_by_safety_checker"] = bool(zoo.blanked)
        written.append({"file": path.name, "model": inv.model, "prompt": inv.prompt,
                        "checkpoint": zoo.checkpoint(inv.model), "seed": seed, **zoo.settings(inv.model), **info,
                        "scheduler": type(zoo.pipeline(inv.model).scheduler).__name__,
                        "seconds": round(time.perf_counter() - t0, 3)})
    record = {"response": meta.response, "problems": meta.problems, "outputs": written}
    with _atomic(out / "generated.json") as tmp:  # "replace": a lone surrogate of a hand-built MetaResponse -> "?"
        tmp.write_bytes((json.dumps(record, indent=2, ensure_ascii=False) + "\n").encode("utf-8", "replace"))
    return written


def render_predictions(path: str, out: str, zoo: ModelZoo, limit: int) -> None:
    """Each record of a predictions file that invokes a model -> OUT/<folder of its id>/; bad lines are skipped."""
    rows, bad = read_predictions(path)
    for n, why in bad:
        print(f"{path}:{n}: skipped: {why}", file=sys.stderr)
    done, taken = 0, set()
    for rid, text in rows:
        meta = parse_meta_response(text)
        if meta.invocations and (not limit or done < limit):
            folder = Path(out) / record_folder(rid, taken)
            written, done = generate(meta, folder, zoo), done + 1
            print(f"{rid!r}: " + ", ".join(f"{folder / w['file']} ({w['prompt']!r})" for w in written))
    if bad:
        sys.exit(f"error: {len(bad)} bad lines in {path} skipped (listed above); the {len(rows)} good ones were read")


def add_zoo_args(parser: argparse.ArgumentParser, zoo: str = "paper", exclude=()) -> None:
    """--zoo PRESET and one flag per ZooConfig field (--text_to_image ID_OR_DIR, --image_steps N, ...; the hyphen
    spelling --text-to-image is an alias), except `exclude`. Shared by generate.py and chat.py (one set of names)."""
    group = parser.add_argument_group("model zoo M (generate.py's ZooConfig; a flag overrides the --zoo preset)")
    group.add_argument("--zoo", choices=sorted(PRESETS), default=zoo,
                       help="paper: the paper's checkpoints (GPU, downloads); tiny: random tiny pipelines (CPU, offline)")
    for f in dataclasses.fields(ZooConfig):
        if f.name not in exclude:
            names = dict.fromkeys(["--" + f.name, "--" + f.name.replace("_", "-")])  # one name if there is no _
            shown = "ID_OR_DIR" if f.name.startswith("text_to_") else None if "choices" in f.metadata else f.name.upper()
            group.add_argument(*names, dest=f"zoo_{f.name}", type=type(f.default), default=None, metavar=shown,
                               choices=f.metadata.get("choices"), help=f"{f.metadata['help']} (paper: {f.default})")


def zoo_config(args: argparse.Namespace, **fixed) -> ZooConfig:
    """The ZooConfig of add_zoo_args' flags: the --zoo preset, then each flag given, then `fixed`.
    A value a pipeline would misuse raises ValueError naming the flag."""
    flags = {f.name: v for f in dataclasses.fields(ZooConfig) if (v := getattr(args, f"zoo_{f.name}", None)) is not None}
    return dataclasses.replace(PRESETS[args.zoo], **flags | fixed)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("meta", nargs="?", help="the LLM's meta-response text, or - to read it from stdin")
    p.add_argument("--predictions", metavar="JSONL",
                   help='instead of META: lines {"id", "prediction"} (evaluate.py --save_predictions); '
                        "each record's files go to OUT/<id>/ (a hash is added if <id> had to be made safe)")
    p.add_argument("--limit", type=int, default=0, help="with --predictions: the first N that invoke a model")
    p.add_argument("--out", default="outputs", help="folder for the generated files and generated.json")
    p.add_argument("--dry-run", action=argparse.BooleanOptionalAction, default=False,
                   help="only parse and print the meta-response")
    add_zoo_args(p)
    args = p.parse_args(argv)
    if (args.meta is None) == (args.predictions is None):
        p.error("give a meta-response text (or -) or --predictions FILE")
    try:
        cfg = zoo_config(args)
    except ValueError as e:
        sys.exit(f"error: {e}")
    if args.limit < 0:
        sys.exit(f"error: --limit {args.limit}: must be >= 0 (0 = every record)")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        sys.exit(f"error: --out {args.out} is a file; pass a folder (created if missing)")
    try:
        if args.predictions:
            render_predictions(args.predictions, args.out, ModelZoo(cfg), args.limit)
            return
        meta = parse_meta_response(sys.stdin.read() if args.meta == "-" else args.meta)
        print(f"reply: {meta.response}")
        for problem in meta.problems:
            print(f"problem: {problem}")
        for inv in meta.invocations:
            print(f"invocation: {inv.model}: {inv.prompt}")
        for w in [] if args.dry_run else generate(meta, args.out, ModelZoo(cfg)):
            print(f"wrote {Path(args.out) / w['file']} ({w['model']}, {w['seconds']:.1f} s)")
    except OSError as e:  # weights that cannot be loaded, an output folder we cannot write
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
