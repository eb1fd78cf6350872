"""The chat with ModaVerse, as a user meets it: O' = M(LLM'(P(ImageBind(I')))) of the paper's Eq. (1), one turn at a
time. Media files go through ImageBind (encode.py) and P into the LLM (agent.py), which writes the meta-response O2;
the chat shows its reply text and one line per invocation, and with --generate runs them through the model zoo M
(generate.py; Fig. 3, "final response generation"). Nothing imports this file.

    python chat.py --preset tiny "Draw a cat"                              # untrained tiny model: a smoke test
    python chat.py --adapter out/toy --image cat.png "Generate a sound this animal makes"
    python chat.py --adapter out/toy --audio dog.wav "Draw this animal" --generate --zoo tiny
    python chat.py --adapter out/toy --interactive                         # multi-turn chat; /help lists commands
    python chat.py --adapter out/paper --device cuda --encoder_checkpoint imagebind_huge.pth --image cat.png \\
        "Make the sound this animal makes" --generate --text_to_audio /models/audioldm-l-full   # the paper's models

With --generate, turn N writes OUT_DIR/turn-NN/ (its files and generated.json): no turn overwrites another.
"""
import argparse
import json
import logging
import os
import re
import sys
import warnings
from pathlib import Path

import torch
import transformers

import agent
import generate
from project import MODALITIES

HELP = """commands (not sent to the model):
  /image PATH   attach an image to your next message (also /audio PATH, /video PATH; several are fine)
  /reset        forget the conversation and the attached files
  /help         this list
  /quit         leave (or Ctrl-D)"""
_REPLY = re.compile(r'\s*\{\s*"response"\s*:\s*"((?:[^"\\]|\\.)*)')  # the reply string of a JSON meta-response


def quiet_logs(generating: bool):
    """Hide what a chat user cannot act on: per-load progress bars (hub downloads, checkpoint shards, weights,
    pipeline components), library warnings, and the deprecation notices diffusers 0.42 logs for
    TextToVideoSDPipeline and AudioLDMPipeline (still working and tested here). Errors still show; -v skips this."""
    logging.getLogger().setLevel(logging.ERROR)  # imagebind.data warns on the root logger of audio it pads (encode.py)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # also huggingface_hub's download bars
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|diffusers|huggingface_hub)\b")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"(transformers|diffusers|huggingface_hub)\b")
    if generating:  # diffusers is imported only to run invocations. Its denoising bars stay: a long step that moves
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.set_verbosity_error()
        diffusers_logging.disable_progress_bar()


def reply_so_far(text: str) -> str | None:
    """The reply readable in a meta-response still being written: the "response" string of the JSON object the LLM
    is trained to write (agent.format_meta_response), as far as it goes; the text itself if it is not JSON."""
    if not text.lstrip().startswith("{"):
        return text.split(agent.END)[0].rstrip("#")  # a trailing "#" may be the start of END
    if not (m := _REPLY.match(text)):
        return None
    body = re.sub(r"\\u[0-9a-fA-F]{0,3}$", "", m[1])  # an escape cut in half (\u00) waits for its next token
    try:
        reply = json.loads(f'"{body}"', strict=False)
    except ValueError:
        return None
    return reply[:-1] if reply and "\ud800" <= reply[-1] <= "\udbff" else reply  # half a surrogate pair waits too


class Stream:
    """agent's on_token hook for a batch of one: prints the reply as the LLM writes it, token by token."""

    def __init__(self, tokenizer):
        self.tokenizer, self.shown, self.ok = tokenizer, "", True

    def __call__(self, new: list[list[int]]):
        now = reply_so_far(self.tokenizer.decode(new[0]))
        if now is None or not self.ok:
            return
        now = now.rstrip("\ufffd")  # the bytes of a character split over tokens: wait for the rest
        now = now if self.shown else now.lstrip()
        if now.startswith(self.shown):
            print(now[len(self.shown):], end="", flush=True)
            self.shown = now
        else:  # the text changed under what was shown (rare): show() prints the whole reply again
            self.ok = False


def next_turn_folder(out_dir: str) -> Path:
    """OUT_DIR/turn-NN with NN above every existing one, created here: no turn, of this chat or an earlier one,
    overwrites another's 00-<model>.<ext> or generated.json."""
    n = max((int(p.name[5:]) for p in Path(out_dir).glob("turn-*") if p.name[5:].isdigit()), default=0)
    while True:
        n += 1
        try:
            (folder := Path(out_dir) / f"turn-{n:02d}").mkdir(parents=True)
            return folder
        except FileExistsError:  # another chat writing into the same folder took it
            pass


class Chat:
    """The conversation: the model, the turns so far (agent's history) and the media attached to the next message."""

    def __init__(self, model: agent.ModaVerse, args: argparse.Namespace, zoo_cfg):
        self.model, self.args, self.zoo_cfg, self.zoo = model, args, zoo_cfg, None
        self.checkpoint = args.encoder_checkpoint or model.cfg.encoder_checkpoint
        self.history, self.media = [], []  # [(instruction, media, meta-response)]; [(modality, feature)]
        self.info = sys.stderr if args.json else sys.stdout  # with --json, stdout holds meta-responses only

    def reset(self):
        self.history, self.media = [], []
        print("(conversation and attached files forgotten)", file=self.info)

    def attach(self, modality: str, path: str):
        """Encode a file now (ImageBind, cached by encode.py), so a bad file is reported before the message."""
        if not path or not os.path.isfile(path):
            raise FileNotFoundError(f"no such {modality} file: {path or '(none given)'}; nothing attached")
        if self.checkpoint and not os.path.isfile(self.checkpoint):
            raise FileNotFoundError(f"encoder checkpoint {self.checkpoint} (from the adapter's config.json) not found: "
                                    "pass --encoder_checkpoint FILE")
        import encode  # lazy: ImageBind is heavy and only needed when there are media files

        feature = encode.encode_files([path], modality, self.model.cfg.encoder, self.args.cache_dir, self.checkpoint,
                                      device=self.args.device, progress=False)[0]
        self.media.append((modality, feature))
        print(f"attached {modality}: {path} ({len(self.media)} file(s) go with your next message)", file=self.info)

    def say(self, instruction: str):
        """One turn: the LLM writes O2 (streamed), the chat shows it and, with --generate, runs M on it."""
        a = self.args
        if a.show_prompt:
            print(agent.render_chat([*self.history, (instruction, self.media, None)], self.model.cfg.tokens_per_item))
        stream = Stream(self.model.tokenizer) if a.stream and not a.json else None
        text = self.model.respond(instruction, self.media, self.history, a.max_new_tokens, a.temperature,
                                  on_token=stream)
        self.history.append((instruction, self.media, text))
        self.media = []
        meta = generate.parse_meta_response(text)
        if a.json:
            print(text)
        else:
            show(text, meta, stream.shown if stream and stream.ok else "")
        if a.generate and meta.invocations:
            if self.zoo is None:  # made once: it keeps the pipelines it loaded for the next turn
                self.zoo = generate.ModelZoo(self.zoo_cfg)
            folder = next_turn_folder(a.out_dir)
            for w in generate.generate(meta, folder, self.zoo):
                blanked = " (blanked by the safety checker: a black image)" * bool(w.get("blanked_by_safety_checker"))
                print(f"  wrote {folder / w['file']}{blanked}", file=self.info)


def show(text: str, meta: generate.MetaResponse, streamed: str):
    """The reply text (its streamed part already printed), then '→ model: prompt' per invocation and a note per
    problem. An answer that is no meta-response is shown as written, with a one-line note saying so."""
    broken = [p for p in meta.problems if "JSON meta-response" in p]  # meta_response._broken_json's wording
    unparsed = broken or (not meta.invocations and not meta.problems and meta.response == text.strip())
    reply = text.strip() if unparsed else meta.response
    streamed = streamed.rstrip()
    if streamed and reply.startswith(streamed):
        print(reply[len(streamed):])  # what the stream held back (a split character, a trailing #), and the newline
    else:
        print(("\n" if streamed else "") + reply)  # the streamed text was not the reply (another format): all of it
    if unparsed:
        why = broken[0].split(";")[0] if broken else "no JSON, flags or tuples"
        print(f"(note: the answer is not a usable meta-response ({why}): shown as written, nothing to run)")
        return
    for problem in meta.problems:
        print(f"(note: {problem})")
    for inv in meta.invocations:
        print(f"→ {inv.model}: {inv.prompt}")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("instruction", nargs="?", help="what the user asks (with --interactive: the first message)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--adapter", metavar="DIR", help="train.py's adapter folder (adapter.safetensors + config.json)")
    which.add_argument("--preset", choices=sorted(agent.PRESETS), help="instead of --adapter: an UNTRAINED model")
    p.add_argument("--encoder_checkpoint", metavar="FILE", help="a local imagebind_huge .pth file to encode the media "
                   "(default: the adapter config's encoder_checkpoint; none: the imagebind package downloads it)")
    for m in MODALITIES:  # one list, so the order of --image/--audio/--video on the command line is kept
        p.add_argument(f"--{m}", dest="media", action="append", default=[], metavar="PATH",
                       type=lambda path, m=m: (m, path), help=f"{m} file for the first message (repeatable)")
    p.add_argument("--interactive", action=argparse.BooleanOptionalAction, default=False,
                   help="multi-turn chat in the terminal (/help lists its commands)")
    p.add_argument("--max_new_tokens", type=int, default=256, help="longest meta-response, in tokens")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy decoding; >0: sampling")
    p.add_argument("--seed", type=int, default=0, help="random seed of sampling and of the generators (M)")
    p.add_argument("--device", default="cpu", help="the LLM's and ImageBind's device: cpu, cuda, cuda:1, ...")
    p.add_argument("--cache_dir", default=".cache/features", help="encode.py's feature cache")
    p.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True,
                   help="print the reply while the LLM writes it (not with --json)")
    p.add_argument("--json", action=argparse.BooleanOptionalAction, default=False,
                   help="print the raw meta-response instead of the reply and the invocation lines")
    p.add_argument("--show_prompt", action=argparse.BooleanOptionalAction, default=False,
                   help="print the prompt the LLM reads (▢ = a media placeholder token)")
    p.add_argument("--generate", action=argparse.BooleanOptionalAction, default=False,
                   help="run the invocations through generate.py's model zoo M")
    p.add_argument("--out_dir", default="outputs", help="with --generate: turn N writes OUT_DIR/turn-NN/")
    p.add_argument("-v", "--verbose", action="store_true", help="show the libraries' progress bars and warnings")
    generate.add_zoo_args(p, zoo="tiny", exclude=("device", "seed"))  # the zoo picks its device; --seed is shared
    args = p.parse_args(argv)
    if not (args.instruction or args.interactive):
        p.error("give an instruction (or --interactive)")
    return args


def main(argv=None):
    args = parse_args(argv)
    if not args.verbose:
        quiet_logs(args.generate)
    try:  # the cheap checks first: a typo is reported before any model loads
        zoo_cfg = generate.zoo_config(args, seed=args.seed) if args.generate else None
        for path in [p for _, p in args.media] + [args.encoder_checkpoint or ""]:
            if path and not os.path.isfile(path):
                raise FileNotFoundError(f"no such file: {path}")
        if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
            raise ValueError(f"--out_dir {args.out_dir} is a file; pass a folder (created if missing)")
        torch.manual_seed(args.seed)
        model = agent.load_adapter(args.adapter, inference=True) if args.adapter else agent.ModaVerse.from_config(
            agent.PRESETS[args.preset])
        chat = Chat(model.to(args.device).eval(), args, zoo_cfg)
        for modality, path in args.media:
            chat.attach(modality, path)
        if not args.interactive:
            chat.say(args.instruction)
            return
    except (OSError, ValueError, RuntimeError) as e:  # a typo, a broken media file: a message, not a traceback
        raise SystemExit(f"error: {e}")
    print("ModaVerse chat: /help lists the commands.", file=chat.info)
    line = args.instruction
    while True:
        if line is None:
            try:
                line = input("you> ").strip()
            except (EOFError, KeyboardInterrupt):
                print()
                return
        command, _, rest = line.partition(" ")
        try:
            if line in ("/quit", "/exit"):
                return
            elif line == "/help":
                print(HELP)
            elif line == "/reset":
                chat.reset()
            elif command[1:] in MODALITIES and command.startswith("/"):
                chat.attach(command[1:], rest.strip())
            elif command.startswith("/"):
                print(f"error: unknown command {command}; /help lists the commands")
            elif line:
                chat.say(line)
        except (OSError, ValueError, RuntimeError) as e:  # e.g. a bad media file: the chat goes on
            print(f"error: {e}")
        except KeyboardInterrupt:  # Ctrl-C stops a long answer or generation, not the chat
            print("\n(stopped)")
        line = None


if __name__ == "__main__":
    main()
