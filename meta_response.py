r"""O2 of the paper's Eq. (1), the meta-response: its model names and parse_meta_response, which reads it.

The fine-tuned LLM answers with a meta-response: a text reply plus invocations (model name, prompt) of
pretrained generators (Fig. 3, "final response generation"). parse_meta_response turns whatever the LLM
wrote into a MetaResponse without evaluating it as code, reporting precisely what it could not use.
It is the plain-data interface between LLM' (agent.py writes O2) and M (generate.py runs it), kept apart from
generate.py so that the readers of O2 (chat, evaluate, report, benchmarks) need not load the zoo.

Formats, first match wins (prose or ```json fences around the JSON are fine):
  JSON    {"response": "Sure!", "invocations": [{"model": "text-to-image", "prompt": "a cat"}]}   (ours)
          also as a Python literal ({'response': ...}), or bare invocations {"model": ..., "prompt": ...};
          only the first meta-response object is used, anything like one outside it is a reported problem
  flags   Modality: [IMAGE] Prompt: a photo of a cat ###          (the official code; [TEXT] = reply text)
  tuples  Sure! ("text-to-image", "A photo of a cat")              (the paper's notation)

    python generate.py --dry-run 'Modality: [VIDEO] Prompt: a dog running ###'   # parse and print only
"""
import ast
import contextlib
import json
import re
from dataclasses import dataclass, field

MODELS = {"text-to-image": "png", "text-to-video": "mp4", "text-to-audio": "wav"}  # model name -> file type
FLAGS = {"[TEXT]": None, "[IMAGE]": "text-to-image", "[VIDEO]": "text-to-video", "[AUDIO]": "text-to-audio"}
MAX_PROMPT_CHARS = 1000  # CLIP reads 77 tokens (~300 characters); longer is an LLM stuck in a loop
MAX_INVOCATIONS = 8


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
