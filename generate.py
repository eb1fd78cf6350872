r"""M of the paper's Eq. (1): parse the meta-response O2, run the text-to-x model zoo M, save O'.

The fine-tuned LLM answers with a meta-response: a text reply plus invocations (model name, prompt) of
pretrained generators (Fig. 3, "final response generation"). parse_meta_response turns whatever the LLM
wrote into a MetaResponse without evaluating it as code, reporting precisely what it could not use;
generate calls diffusers pipelines directly and writes PNG / MP4 / WAV files under names it chooses.

Meta-response formats, first match wins (prose or ```json fences around the JSON are fine):
  JSON    {"response": "Sure!", "invocations": [{"model": "text-to-image", "prompt": "a cat"}]}   (ours)
          also as a Python literal ({'response': ...}), or bare invocations {"model": ..., "prompt": ...};
          only the first meta-response object is used, anything like one outside it is a reported problem
  flags   Modality: [IMAGE] Prompt: a photo of a cat ###          (the official code; [TEXT] = reply text)
  tuples  Sure! ("text-to-image", "A photo of a cat")              (the paper's notation)

Model zoo (ZooConfig: each checkpoint is a hub id, a local folder, or "tiny"):
  text-to-image  stable-diffusion-v1-5/stable-diffusion-v1-5  StableDiffusionPipeline (runwayml/... was removed)
  text-to-video  ali-vilab/text-to-video-ms-1.7b   TextToVideoSDPipeline, DPM-Solver++ as the official code
  text-to-audio  cvssp/audioldm-l-full             AudioLDMPipeline (the official config's AudioLDM)
  tiny           seeded random pipelines of the same classes, built from configs (tests, offline runs)

  python generate.py --zoo tiny --out outputs/ \
      '{"response": "Here.", "invocations": [{"model": "text-to-image", "prompt": "a cat"}]}'  # CPU, offline
  python generate.py 'Modality: [VIDEO] Prompt: a dog running ###' --out outputs/   # paper zoo, one GPU
  python generate.py - --text_to_audio /models/audioldm-s-full-v2 < reply.txt      # meta-response from stdin
"""
import argparse
import ast
import contextlib
import dataclasses
import gzip
import hashlib
import importlib.util
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MODELS = {"text-to-image": "png", "text-to-video": "mp4", "text-to-audio": "wav"}  # model name -> file type
OUTPUT_FIELD = {"text-to-image": "images", "text-to-video": "frames", "text-to-audio": "audios"}
FLAGS = {"[TEXT]": None, "[IMAGE]": "text-to-image", "[VIDEO]": "text-to-video", "[AUDIO]": "text-to-audio"}
MAX_PROMPT_CHARS = 1000  # CLIP reads 77 tokens (~300 characters); longer is an LLM stuck in a loop
MAX_INVOCATIONS = 8


# ----------------------------------------------------------------------------- meta-response O2
@dataclass
class Invocation:
    model: str  # one of MODELS
    prompt: str


@dataclass
class MetaResponse:
    response: str  # the text reply shown to the user
    invocations: list[Invocation] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # what was written but could not be used, and why


_FENCE = re.compile(r"```[A-Za-z]*")
_OBJECT_START = re.compile(r"""\{\s*["']""")
_KEY = re.compile(r"""(["'])(?:response|invocations|model|prompt)\1""")  # a key of ours, in JSON or Python quotes
_RESPONSE_FIELD = re.compile(r'"response"\s*:\s*"((?:[^"\\]|\\.)*)"')
_FLAG = r"\[(?:TEXT|IMAGE|AUDIO|VIDEO)\]"
# "[IMAGE] [AUDIO] Prompt: x ###": flags, then a prompt that ends at ###, at the next flag or at the end
_FLAG_SEGMENT = re.compile(rf"(?:Modality:\s*)?((?:{_FLAG}\s*)+)(?:Prompt:)?(.*?)(?:###|(?=(?:Modality:\s*)?{_FLAG})|\Z)", re.S)
_TUPLE = re.compile(r"""\(\s*(["'])(text-to-[\w-]*)\1\s*,\s*(?:"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)')\s*\)""")


def parse_meta_response(text: str) -> MetaResponse:
    """Read O2 as JSON, flags or tuples (the first that matches); what cannot be used goes to .problems."""
    meta = _parse(text)
    # JSON escapes such as "\ud800" decode to lone surrogates, which no UTF-8 file, terminal or tokenizer takes
    fix = lambda s: s.encode("utf-8", "replace").decode("utf-8")  # noqa: E731
    return MetaResponse(fix(meta.response), [Invocation(i.model, fix(i.prompt)) for i in meta.invocations],
                        [fix(p) for p in meta.problems])


def _parse(text: str) -> MetaResponse:
    """parse_meta_response, before lone surrogates are replaced."""
    clean, problems, found, error, tries = _FENCE.sub("", text).strip(), [], [], None, 0
    for m in _OBJECT_START.finditer(clean):  # outermost first; an object of ours is not searched inside
        if found and m.start() < found[-1][1]:
            continue
        if (tries := tries + 1) > 20:
            break
        try:
            obj, end = _decode(clean, m.start())
        except (ValueError, RecursionError) as e:
            error = error or e
            continue
        if isinstance(obj, dict) and obj.keys() & {"response", "invocations", "model", "prompt"}:
            found.append((m.start(), end, obj))
    metas = [f for f in found if f[2].keys() & {"response", "invocations"}]
    # The first meta-response, else bare invocations {"model", "prompt"}, but only when nothing failed to parse:
    # the invocations inside a truncated meta-response parse on their own and must not run.
    if metas or (found and error is None):
        used = metas[:1] or found
        prose = _outside(clean, [f[:2] for f in used])
        if stray := next((k for k in _KEY.finditer(clean) if not any(a <= k.start() < b for a, b, _ in used)), None):
            problems.append(f"{stray[0]} at character {stray.start()} lies outside the object read "
                            "(a second or broken meta-response?); it was ignored")
        obj = used[0][2] if metas else {"invocations": [f[2] for f in found]}
        response, items = obj.get("response", prose), obj.get("invocations", [])
        if not isinstance(response, str):
            problems.append('"response" is not a string; using the text around the JSON')
            response = prose
        if not isinstance(items, list):
            problems.append(f'"invocations" must be a list, got {type(items).__name__}')
            items = []
        return MetaResponse(response.strip(), _validate(items, problems), problems)
    if error is not None and _KEY.search(clean):
        return _broken_json(clean, error)
    if segments := list(_FLAG_SEGMENT.finditer(text)):  # official format: [TEXT] segments are reply text,
        items, replies = [], []  # the other flags share the prompt that follows them
        for m in segments:
            for flag in re.findall(_FLAG, m[1]):
                if FLAGS[flag] is None:
                    replies.append(m[2].strip())
                else:
                    items.append({"model": FLAGS[flag], "prompt": m[2].strip()})
        response = " ".join(r for r in [_outside(text, [m.span() for m in segments]), *replies] if r)
    elif tuples := list(_TUPLE.finditer(text)):  # the paper's ("text-to-image", "a cat"); \" and \' unescaped
        items = [{"model": m[2], "prompt": re.sub(r"\\(.)", r"\1", m[3] if m[3] is not None else m[4], flags=re.S)}
                 for m in tuples]
        response = _outside(text, [m.span() for m in tuples])
    else:
        return MetaResponse(text.strip())
    return MetaResponse(response, _validate(items, problems), problems)


def _broken_json(clean: str, e: Exception) -> MetaResponse:
    """The LLM began a JSON meta-response that does not parse: run nothing, keep its text reply if readable."""
    what = "invalid JSON meta-response (nested too deeply)"
    if isinstance(e, json.JSONDecodeError):
        truncated = e.msg.startswith("Unterminated string") or e.pos >= len(clean)
        what = f"{'truncated' if truncated else 'invalid'} JSON meta-response ({e.msg}: character {e.pos})"
    response = clean
    if m := _RESPONSE_FIELD.search(clean):
        try:
            response = json.loads(f'"{m[1]}"')
        except ValueError:
            response = m[1]
    return MetaResponse(response.strip(), [], [f"{what}; no invocations run, using the text reply"])


def _decode(text: str, start: int) -> tuple[object, int]:
    """(object, end) of the JSON object at text[start], or else of a Python literal {'response': ...}."""
    try:
        return json.JSONDecoder().raw_decode(text, start)
    except ValueError as e:
        if not _OBJECT_START.match(text, start)[0].endswith("'"):
            raise
        error = e
    end = start
    for _ in range(50):  # the shortest text up to a "}" that is a literal; ast never runs code
        if not (end := text.find("}", end) + 1):
            break
        with contextlib.suppress(ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return ast.literal_eval(text[start:end]), end
    raise error


def _outside(text: str, spans: list[tuple[int, int]]) -> str:
    """The prose around the spans (start, end) of what was read, joined by single spaces."""
    cuts = [0, *[i for span in spans for i in span], len(text)]
    return " ".join(p.strip() for p in (text[a:b] for a, b in zip(cuts[::2], cuts[1::2])) if p.strip())


def _validate(items: list, problems: list[str]) -> list[Invocation]:
    """Keep the invocations the zoo can run; append one precise problem for each one dropped."""
    if len(items) > MAX_INVOCATIONS:
        problems.append(f"{len(items)} invocations; only the first {MAX_INVOCATIONS} are used")
    invocations = []
    for k, item in enumerate(items[:MAX_INVOCATIONS], 1):
        if not isinstance(item, dict):
            problems.append(f'invocation {k} is not an object with "model" and "prompt"')
            continue
        model, prompt = item.get("model"), item.get("prompt")
        prompt = prompt.strip() if isinstance(prompt, str) else prompt
        if model is None:
            problems.append(f"invocation {k} has no model")
        elif not isinstance(model, str) or model not in MODELS:
            problems.append(f"invocation {k}: unknown model {repr(model)[:80]} (known: {', '.join(MODELS)})")
        elif prompt is None:
            problems.append(f"invocation {k} ({model}) has no prompt")
        elif not isinstance(prompt, str):
            problems.append(f"invocation {k} ({model}): prompt is not a string")
        elif not prompt:
            problems.append(f"invocation {k} ({model}) has an empty prompt")
        elif len(prompt) > MAX_PROMPT_CHARS:
            problems.append(f"invocation {k} ({model}): prompt has {len(prompt)} characters, "
                            f"over the limit of {MAX_PROMPT_CHARS}")
        else:
            invocations.append(Invocation(model, prompt))
    return invocations


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
            pipe = _tiny_pipeline(model)
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


def _byte_alphabet() -> list[str]:
    """The 256 symbols of byte-level BPE (GPT-2, CLIP, Roberta): printable bytes stand for themselves, others move."""
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    return [chr(b) for b in keep] + [chr(256 + n) for n in range(256 - len(keep))]


def _clip_tokenizer():
    """Stable Diffusion's CLIP tokenizer, rebuilt offline from the BPE merges the imagebind package ships."""
    from transformers import CLIPTokenizer

    chars = _byte_alphabet()
    bpe = Path(importlib.util.find_spec("imagebind").submodule_search_locations[0]) / "bpe/bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(bpe, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(m.split()) for m in lines[1:48895]]  # 49408 tokens = 2 x 256 byte symbols + 48894 merges + 2
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=merges, model_max_length=77)


def _tiny_pipeline(model: str):
    """A seeded random pipeline of the paper's class for `model`: 0.5-2M weights, offline."""
    import torch
    from diffusers import (AudioLDMPipeline, AutoencoderKL, DDIMScheduler, StableDiffusionPipeline,
                           TextToVideoSDPipeline, UNet2DConditionModel, UNet3DConditionModel)
    from transformers import (ClapTextConfig, ClapTextModelWithProjection, CLIPTextConfig, CLIPTextModel,
                              RobertaTokenizer, SpeechT5HifiGan, SpeechT5HifiGanConfig)

    with torch.random.fork_rng():  # seed the weights without touching the caller's RNG
        torch.manual_seed(0)
        scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  clip_sample=False, set_alpha_to_one=False, steps_offset=1)
        channels = 1 if model == "text-to-audio" else 3  # AudioLDM's VAE works on 1-channel mel spectrograms
        vae = AutoencoderKL(block_out_channels=(16, 32), in_channels=channels, out_channels=channels, latent_channels=4,
                            down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                            norm_num_groups=8)
        blocks = dict(block_out_channels=(16, 32), layers_per_block=1, in_channels=4, out_channels=4, norm_num_groups=8)
        down, up = ("DownBlock2D", "CrossAttnDownBlock2D"), ("CrossAttnUpBlock2D", "UpBlock2D")
        if model == "text-to-audio":
            # AudioLDM: CLAP text embedding (Roberta tokens) conditions the UNet as a class embedding, not cross-attention
            byte_vocab = ["<s>", "<pad>", "</s>", "<unk>", *_byte_alphabet(), "<mask>"]  # bytes only, no merges
            tokenizer = RobertaTokenizer(vocab={t: i for i, t in enumerate(byte_vocab)}, merges=[], model_max_length=77)
            text_encoder = ClapTextModelWithProjection(ClapTextConfig(
                vocab_size=len(byte_vocab), hidden_size=32, intermediate_size=64, num_attention_heads=4,
                num_hidden_layers=2, projection_dim=32, bos_token_id=0, pad_token_id=1, eos_token_id=2))
            unet = UNet2DConditionModel(**blocks, down_block_types=down, up_block_types=up, cross_attention_dim=(16, 32),
                                        class_embed_type="simple_projection", projection_class_embeddings_input_dim=32,
                                        class_embeddings_concat=True)
            vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(
                model_in_dim=8, sampling_rate=16000, upsample_initial_channel=16, upsample_rates=[2, 2],
                upsample_kernel_sizes=[4, 4], resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3, 5]],
                normalize_before=False))
            return AudioLDMPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                    scheduler=scheduler, vocoder=vocoder)
        tokenizer = _clip_tokenizer()
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2,
            max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407))
        if model == "text-to-video":
            unet = UNet3DConditionModel(**blocks, down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                                        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), cross_attention_dim=32,
                                        attention_head_dim=4)
            return TextToVideoSDPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                         scheduler=scheduler)
        unet = UNet2DConditionModel(**blocks, down_block_types=down, up_block_types=up, cross_attention_dim=32)
        return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)


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


def read_predictions(path: str) -> tuple[list[tuple[str, str]], int]:
    """(id, prediction) of each good line of a JSON Lines file; each bad line is named on stderr and counted."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        sys.exit(f"error: cannot read --predictions {path}: {e.strerror or e}; "
                 "pass the JSON Lines file that evaluate.py --save_predictions writes")
    rows, bad = [], 0
    for n, line in enumerate(data.split(b"\n"), 1):  # JSON Lines ends a line at \n only, not at U+2028 or U+0085
        if not line.strip():
            continue
        try:
            rec = json.loads(line.decode("utf-8"))
            why = ('not an object {"id": ..., "prediction": ...}' if not isinstance(rec, dict)
                   else 'no "id"' if "id" not in rec
                   else '"id" is not a string or an integer' if not isinstance(rec["id"], (str, int))
                   else '"prediction" is not a string' if not isinstance(rec.get("prediction"), str) else None)
        except ValueError as e:  # UnicodeDecodeError is one
            why = f"not UTF-8 JSON ({e})"
        if why:
            print(f"{path}:{n}: skipped: {why}", file=sys.stderr)
            bad += 1
        else:
            rows.append((str(rec["id"]), rec["prediction"]))
    return rows, bad


def record_folder(rid: str, taken: set[str]) -> str:
    """A folder name of its own for record id `rid`, made of [A-Za-z0-9_.-] and never '', '.', '..' or hidden.
    An id that had to change, or that clashes with a name in `taken` (compared in lower case, as macOS and
    Windows do), gets a short hash of the exact id, so 'a/b' and 'a_b' never share a folder."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", rid).lstrip(".")[:64] or "_"
    if name != rid or name.lower() in taken:
        name += "-" + hashlib.sha256(rid.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    while name.lower() in taken:  # the same id twice, or an id crafted to look hashed
        name += "_"
    taken.add(name.lower())
    return name


def render_predictions(path: str, out: str, zoo: ModelZoo, limit: int) -> None:
    """Each record of a predictions file that invokes a model -> OUT/<folder of its id>/; bad lines are skipped."""
    rows, bad = read_predictions(path)
    done, taken = 0, set()
    for rid, text in rows:
        meta = parse_meta_response(text)
        if meta.invocations and (not limit or done < limit):
            folder = Path(out) / record_folder(rid, taken)
            written, done = generate(meta, folder, zoo), done + 1
            print(f"{rid!r}: " + ", ".join(f"{folder / w['file']} ({w['prompt']!r})" for w in written))
    if bad:
        sys.exit(f"error: {bad} bad lines in {path} skipped (listed above); the {len(rows)} good ones were read")


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
