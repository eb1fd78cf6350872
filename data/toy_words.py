"""The toy data set's words: its world knowledge and the phrasings of instructions and targets (data/make_toy.py).

TRAIN_WORDS are the templates of the training instructions; HELD_OUT_WORDS are phrasings that no training template
uses, for test_wordings.jsonl only: no piece of them (held_out_pieces) may ever appear in a train or val
instruction, and make_toy.check refuses a record that has one (data/README.md §4, "Held-out wordings"). The
target sentences (describe, tone) and a picture/video request with its generator prompt (ask_visual) are here too.
This file imports only toy_media.py (the attribute vocabulary and `a`).
"""
import re

import numpy as np

from toy_media import DIRECTIONS, RHYTHMS, a

# The toy's "world knowledge" (paper: "an image of the animal that makes this sound").
FOOD = {"red": "strawberry", "orange": "carrot", "yellow": "banana", "green": "cucumber", "blue": "blueberry",
        "purple": "plum", "pink": "dragon fruit", "brown": "potato"}
INSTRUMENT = {"sine": "flute", "square": "clarinet", "sawtooth": "violin"}
WAVEFORM_OF = {v: k for k, v in INSTRUMENT.items()}
THINGS = ("kite", "balloon", "car", "boat", "bird", "ball", "hat", "fish")

# Instruction wordings. A request names its output model (paper Sec. 3.2, output-side alignment); {x} is what to
# make. "describe"/"colour" turn a generator down ({refuse} {refusing} {gen}: REFUSAL) and ask about the media
# item ({noun}); "question" asks the toy's world knowledge without media (key: the slot that answers).
# HELD_OUT_WORDS are phrasings that no training template uses (test_wordings.jsonl, data/README.md §4): they test
# whether the LLM's language survives the LoRA, not its memory of templates.
TRAIN_WORDS = {
    "text-to-image": ("Draw {x}.", "Paint {x}.", "Sketch {x}.", "Make a picture of {x}.", "Can you draw {x}?",
                      "Please paint {x}.", "I want a picture of {x}.", "Create an image of {x}.",
                      "Show me a drawing of {x}."),
    "text-to-video": ("Film {x}.", "Animate {x}.", "Make a clip of {x}.", "Shoot a video of {x}.",
                      "Can you film {x}?", "Please animate {x}.", "I want a video of {x}.", "Create a clip of {x}.",
                      "Show me a video of {x}."),
    "text-to-audio": ("Compose {x}.", "Play {x}.", "Make a sound of {x}.", "Generate audio of {x}.",
                      "Can you play {x}?", "Please compose {x}.", "I want to hear {x}.", "Create a sound of {x}.",
                      "Give me audio of {x}."),
    "describe": ("Don't {refuse}; just describe this {noun}.", "Describe this {noun} instead of {refusing}.",
                 "Please don't {refuse}. What is in this {noun}?"),
    "colour": ("Do not {refuse}; what colour is this {noun}?", "What colour is this {noun}? Don't {refuse}."),
    "redirect": ("Don't {refuse}. ", "Do not {refuse}. "),  # put before a request of another model
    "question": {"colour": ("What colour is {food}?", "Which colour does {food} have?"),
                 "food": ("Name a food that is {colour}.", "Which food is {colour}?"),
                 "instrument": ("Which instrument plays {tone}?", "What instrument makes {tone}?"),
                 "tone": ("What tone does {instrument} make?", "Which tone comes from {instrument}?")},
}
HELD_OUT_WORDS = {
    "text-to-image": ("Could you whip up an illustration of {x}?", "I'd love a portrait of {x}.",
                      "How about a doodle of {x}?"),
    "text-to-video": ("I'd love to see some footage of {x}.", "Could you put together a short movie of {x}?",
                      "How about an animation of {x}?"),
    "text-to-audio": ("Let me hear {x}.", "I'd like to listen to {x}.", "Could you produce a recording of {x}?"),
    "describe": ("No {gen}, just tell me what it is.",
                 "Hold off on making a {gen} and explain what this {noun} holds."),
    "colour": ("Skip the {gen} and tell me what colour this is.", "Forget the {gen}; what shade is this {noun}?"),
    "question": {"colour": ("What shade is {food} usually?",), "food": ("Suggest something to eat that is {colour}.",),
                 "instrument": ("If I hear {tone}, which instrument is it?",),
                 "tone": ("What sort of sound would {instrument} give?",)},
}
REFUSAL = {"text-to-image": {"refuse": "draw anything", "refusing": "drawing it", "gen": "picture"},
           "text-to-video": {"refuse": "film anything", "refusing": "filming it", "gen": "video"},
           "text-to-audio": {"refuse": "play anything", "refusing": "playing it", "gen": "sound"}}
RESPONSE = {"text-to-image": "Here is the picture.", "text-to-video": "Here is the video.",
            "text-to-audio": "Here is the sound."}
NOUNS = {"image": ("image", "picture"), "video": ("video", "clip"), "audio": ("sound", "audio")}


def describe_visual(item: dict) -> str:
    """Video shape and direction are not said: a random encoder hardly carries them (data/README.md)."""
    at = item["attributes"]
    if item["modality"] == "image":
        return f"the image shows {a(at['colour'] + ' ' + at['shape'])}"
    return f"the video shows {a(at['colour'])} shape moving"


def tone(at: dict) -> str:
    return a(f"{at['pitch']} {at['waveform']} tone {RHYTHMS[at['rhythm']]}")


def instrument_of(audio: dict, visual: dict | None = None) -> str:
    """What an answer reads from its media, said before the invocation that uses it: "A flute, because the audio is
    a sine tone[, and the video is pink]." Said first, it is copied into the prompt (data/README.md, "Templates")."""
    w = audio["attributes"]["waveform"]
    also = f", and the {visual['modality']} is {visual['attributes']['colour']}" if visual else ""
    return f"{a(INSTRUMENT[w]).capitalize()}, because the audio is {a(w)} tone{also}."


def describe(item: dict) -> str:
    text = f"the audio is {tone(item['attributes'])}" if item["modality"] == "audio" else describe_visual(item)
    return text[0].upper() + text[1:] + "."


def choice(rng: np.random.Generator, options):
    """rng.choice for a sequence of str, returning a plain str (not np.str_)."""
    options = list(options)
    return options[rng.integers(len(options))]


def ask_visual(rng, words: dict, model: str, x: str, colour: str, thing: str) -> tuple[str, dict]:
    """A request of text-to-image / text-to-video for x (a video moves: the direction is said) and its invocation
    with a generator-style prompt."""
    direction, what = choice(rng, list(DIRECTIONS)), a(f"{colour} {thing}")
    if model == "text-to-video":
        x, prompt = f"{x}, moving {direction}", f"a video of {what} moving {direction}"
    else:
        prompt = f"a picture of {what}"
    return choice(rng, words[model]).format(x=x), {"model": model, "prompt": prompt}


def held_out_pieces() -> set[str]:
    """The literal pieces (2+ words, lower case) of every HELD_OUT_WORDS phrasing; no train/val instruction
    may contain one."""
    texts = [t for v in HELD_OUT_WORDS.values() for t in (sum(v.values(), ()) if isinstance(v, dict) else v)]
    pieces = (p.strip(" ,.;?!").lower() for t in texts for p in re.split(r"\{\w+\}", t))
    return {p for p in pieces if len(p.split()) >= 2}
