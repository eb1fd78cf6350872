"""Make instruction-following records from captions (paper §3.3, "Instruction-Following Training").

Output-side instructions (the user asks for an image / video / audio, the answer is a meta-response
that invokes generators) are written by a chat LLM prompted with three ingredients:
  * seed examples           - data/seeds.jsonl, hand-written instruction/meta-response pairs;
  * candidate descriptions  - captions of images, audio clips and videos (records from data/convert.py);
  * language references     - data/language_refs.txt, prompts in the style of the generators'
                              training data, so invocation prompts are short, descriptive, with style tags.
The prompt is SYSTEM_PROMPT + USER_TEMPLATE of data/instruction_templates.py: read it, change it. Without an API, --template
fills the seeds with the descriptions and the references' style tags instead (deterministic from --seed).
Input-side (describe one / several media, in order) and reasoning records (which item matches a
description, does it match, how many items of which kind) always come from the templates there.
The API client (retries, backoff) is data/chat_client.py.

    # offline, no API
    python data/make_instructions.py --template --captions data/real/coco.jsonl data/real/audiocaps.jsonl \\
        --out data/real/instructions.jsonl --num-output 1000 --num-input 200 --num-reasoning 200
    # any OpenAI-compatible endpoint; rerunning the same command resumes (finished ids are skipped)
    export MODAVERSE_API_BASE=https://api.openai.com/v1 MODAVERSE_API_KEY=sk-...
    python data/make_instructions.py --model gpt-4o-mini --workers 4 --captions ... --out ...
    python data/make_instructions.py --print-prompt --captions ... --out x.jsonl   # show one prompt
"""

import argparse
import json
import os
import random
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from chat_client import ApiError, ChatClient, InvalidAnswer  # transport: a chat completion, with retries
from instruction_templates import (A_NOUN, ATTACHMENT, COUNT, DESCRIBE_ONE, DESCRIBE_SEVERAL, MATCH, NUMBER, ORDINAL,
                                   SEED_TEMPLATE, SITUATION_TEXT_ONLY, SITUATION_WITH_MEDIA, SYSTEM_PROMPT,
                                   USER_TEMPLATE, WHICH, as_phrase, as_sentence)  # the wording
from records import (MODEL_FOR, MODELS, NOUN, DataError, append_jsonl, read_jsonl, rebase,
                     scan_jsonl, validate_record)

HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass
class Candidate:
    """One candidate description: a caption and its media (path relative to the output's folder)."""
    id: str
    modality: str
    path: str
    caption: str


@dataclass
class Job:
    """One record to make. Output jobs carry a seed (the pattern to follow); others a task name."""
    id: str
    kind: str
    items: list[Candidate]
    seed: dict | None = None
    task: str = ""
    params: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- ingredients

def load_seeds(path: str) -> list[dict]:
    """Seed records (kind 'output', 0 or 1 media) with an extra 'description' key: the candidate
    description they were written for. --template substitutes it, so in a text-only seed it must
    occur in the instruction, and every invocation prompt must start with it."""
    seeds = []
    for lineno, s, problems in scan_jsonl(path):
        where, d = f"{path}:{lineno}", (s or {}).get("description")
        if problems:
            raise DataError(f"{where}: {'; '.join(problems)}")
        if s["kind"] != "output" or len(s["media"]) > 1:
            raise DataError(f"{where}: a seed must be kind 'output' with at most one media item")
        if not isinstance(d, str) or not d:
            raise DataError(f"{where}: a seed needs a 'description' (the caption it was written for)")
        if not s["media"] and d not in s["instruction"]:
            raise DataError(f"{where}: text-only seed: its 'description' must occur in the instruction")
        if any(not inv["prompt"].startswith(d) for inv in s["target"]["invocations"]):
            raise DataError(f"{where}: every invocation prompt must start with the 'description'")
        seeds.append(s)
    if not seeds:
        raise DataError(f"{path}: no seed examples")
    return seeds


def load_refs(path: str) -> dict[str, list[str]]:
    """Language references, one '<model> | <prompt>' per line; '#' starts a comment line."""
    refs = {m: [] for m in MODELS}
    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except OSError as e:
        raise DataError(f"{path}: cannot open ({e.strerror})") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        model, sep, prompt = (x.strip() for x in line.partition("|"))
        if not sep or model not in MODELS or not prompt:
            raise DataError(f"{path}:{lineno}: expected '<model> | <prompt>' with model in {MODELS}")
        refs[model].append(prompt)
    return refs


def style_tags(ref: str) -> str:
    """The style tags of a reference prompt: everything after its first comma, with the comma."""
    _, sep, tags = ref.partition(",")
    return ", " + tags.strip() if sep and tags.strip() else ""


def load_candidates(paths: list[str], out_dir: str, log=print) -> list[Candidate]:
    """Caption records (one media item, a non-empty response) from data/convert.py output."""
    cands, other = [], 0
    for path in paths:
        for rec in read_jsonl(path):
            if len(rec["media"]) != 1 or not rec["target"]["response"].strip():
                other += 1
                continue
            m = rec["media"][0]
            cands.append(Candidate(rec["id"], m["modality"],
                                   rebase(m["path"], os.path.dirname(os.path.abspath(path)), out_dir),
                                   rec["target"]["response"]))
    if other:
        log(f"note: {other} records in {paths} are not captions (one media item + a response); not used")
    if not cands:
        raise DataError(f"no caption records in {paths}")
    return cands


# ----------------------------------------------------------------------------- planning

def plan(cands: list[Candidate], seeds: list[dict], n_output: int, n_input: int, n_reasoning: int,
         seed: int = 0, prefix: str = "gen") -> list[Job]:
    """All jobs, deterministic from `seed`. Each kind draws from its own RNG in order, so raising
    one count keeps every earlier job (and its id) unchanged - which is what makes resuming safe."""
    jobs, rng = [], random.Random(f"{seed}/output")
    compatible = {m: [s for s in seeds if _fits(s, m)] for m in MODEL_FOR}
    usable = [c for c in cands if compatible[c.modality]]
    if n_output and not usable:
        raise DataError("no seed fits any candidate's modality; add seeds for "
                        f"{sorted({c.modality for c in cands})}")
    order = rng.sample(usable, len(usable))  # shuffled once, then cycled: every caption gets used
    for i in range(n_output):
        c = order[i % len(order)]
        jobs.append(Job(f"{prefix}-out-{i:06d}", "output", [c], seed=rng.choice(compatible[c.modality])))
    rng = random.Random(f"{seed}/input")
    for i in range(n_input):
        k = rng.choice((1, 1, 2, 3))
        jobs.append(Job(f"{prefix}-in-{i:06d}", "input", rng.sample(cands, min(k, len(cands))), task="describe"))
    rng = random.Random(f"{seed}/reasoning")
    by_modality = {m: [c for c in cands if c.modality == m] for m in MODEL_FOR}
    for i in range(n_reasoning):
        task, jid = rng.choice(("which", "match", "count")), f"{prefix}-rsn-{i:06d}"
        if task == "match":  # half the claims are another caption of the same modality: answer "no"
            c = rng.choice(cands)
            claim = rng.choice(by_modality[c.modality]).caption if rng.random() < 0.5 else c.caption
            jobs.append(Job(jid, "reasoning", [c], task=task, params={"claim": claim}))
            continue
        items = rng.sample(cands, min(rng.choice((2, 3)), len(cands)))
        if task == "which" and len({as_phrase(c.caption) for c in items}) < len(items):
            task = "count"  # two identical captions would make 'which one' ambiguous
        jobs.append(Job(jid, "reasoning", items, task=task, params={"answer": rng.randrange(len(items))}))
    return jobs


def _fits(seed: dict, modality: str) -> bool:
    """A seed fits a caption of `modality` if it attaches that modality or, text-only, asks for it first."""
    if seed["media"]:
        return seed["media"][0]["modality"] == modality
    return seed["target"]["invocations"][0]["model"] == MODEL_FOR[modality]


def _media(job: Job) -> list[dict]:
    return [{"modality": c.modality, "path": c.path} for c in job.items]


def _record(job: Job, instruction: str, response: str, invocations: list[dict], source: dict) -> dict:
    return {"id": job.id, "kind": job.kind, "instruction": instruction,
            "media": _media(job) if job.kind != "output" or job.seed["media"] else [],
            "target": {"response": response, "invocations": invocations}, "source": source}


# ----------------------------------------------------------------------------- output side

def build_prompt(job: Job, seeds: list[dict], refs: dict[str, list[str]], shots: int = 5,
                 refs_per_model: int = 3, max_words: int = 60) -> tuple[str, str]:
    """(system, user) messages for one output job: seed examples + candidate description +
    language references for the models it must invoke."""
    rng = random.Random(f"prompt/{job.id}")
    shown = [job.seed] + rng.sample([s for s in seeds if s is not job.seed], min(shots - 1, len(seeds) - 1))
    rng.shuffle(shown)
    examples = []
    for s in shown:
        attach = "" if not s["media"] else ATTACHMENT.format(
            a_noun=A_NOUN[s["media"][0]["modality"]], description=s["description"])
        meta = json.dumps({"response": s["target"]["response"], "invocations": s["target"]["invocations"]},
                          ensure_ascii=False)
        examples.append(SEED_TEMPLATE.format(instruction=s["instruction"], attachment=attach, meta=meta))
    models = [inv["model"] for inv in job.seed["target"]["invocations"]]
    ref_lines = [f"- {m}: {r}" for m in dict.fromkeys(models)
                 for r in rng.sample(refs[m], min(refs_per_model, len(refs[m])))]
    c = job.items[0]
    situation = (SITUATION_WITH_MEDIA.format(a_noun=A_NOUN[c.modality], noun=NOUN[c.modality])
                 if job.seed["media"] else SITUATION_TEXT_ONLY)
    user = USER_TEMPLATE.format(seed_examples="\n\n".join(examples), language_references="\n".join(ref_lines),
                                description=as_phrase(c.caption), situation=situation,
                                models=", ".join(models), max_words=max_words)
    return SYSTEM_PROMPT, user


def parse_answer(text: str, job: Job, generator: str, max_words: int = 60) -> dict:
    """The LLM's answer -> a record, or InvalidAnswer saying why it is dropped."""
    text = text.strip()
    if text.startswith("```"):  # tolerate a Markdown code fence around the JSON
        text = text.split("\n", 1)[-1].rsplit("```", 1)[0]
    try:
        ans = json.loads(text)
    except json.JSONDecodeError:
        raise InvalidAnswer("not JSON", text[:200]) from None
    if not isinstance(ans, dict) or not all(k in ans for k in ("instruction", "response", "invocations")):
        raise InvalidAnswer("missing keys", text[:200])
    invs = ans["invocations"] if isinstance(ans["invocations"], list) else []
    models = [inv.get("model") if isinstance(inv, dict) else None for inv in invs]
    want = [inv["model"] for inv in job.seed["target"]["invocations"]]
    if models != want:
        raise InvalidAnswer("wrong models", f"invoked {models}, asked for {want}")
    if any(len(str(inv.get("prompt", "")).split()) > max_words for inv in invs):
        raise InvalidAnswer("prompt too long", f"over {max_words} words")
    rec = _record(job, ans["instruction"], ans["response"],
                  [{"model": inv["model"], "prompt": inv.get("prompt")} for inv in invs],
                  {"generator": generator, "seed": job.seed["id"], "candidate": job.items[0].id})
    problems = validate_record(rec)
    if problems:
        raise InvalidAnswer("invalid record", "; ".join(problems))
    return rec


def template_output(job: Job, refs: dict[str, list[str]], seed: int = 0) -> dict:
    """Offline stand-in for the LLM: the seed's wording with the candidate description put in its
    place, and style tags from a language reference (or the seed's own, if its instruction asks
    for a style: "keep_style": true)."""
    rng, s = random.Random(f"{seed}/{job.id}"), job.seed
    desc = as_phrase(job.items[0].caption)
    instruction = s["instruction"] if s["media"] else s["instruction"].replace(s["description"], desc)
    invocations = []
    for inv in s["target"]["invocations"]:
        tags = (inv["prompt"][len(s["description"]):] if s.get("keep_style") or not refs[inv["model"]]
                else style_tags(rng.choice(refs[inv["model"]])))
        invocations.append({"model": inv["model"], "prompt": desc + tags})
    return _record(job, instruction, s["target"]["response"].replace(s["description"], desc), invocations,
                   {"generator": "template", "seed": s["id"], "candidate": job.items[0].id})


# ----------------------------------------------------------------------------- input side, reasoning

def template_input(job: Job, seed: int = 0) -> dict:
    rng, items = random.Random(f"{seed}/{job.id}"), job.items
    if len(items) == 1:
        c = items[0]
        return _record(job, rng.choice(DESCRIBE_ONE[c.modality]), as_sentence(c.caption), [],
                       {"generator": "template", "candidates": [c.id]})
    parts = [f"{ORDINAL[i].capitalize()}, the {NOUN[c.modality]}: {as_phrase(c.caption)}." for i, c in enumerate(items)]
    return _record(job, rng.choice(DESCRIBE_SEVERAL).format(n=NUMBER[len(items)]), " ".join(parts), [],
                   {"generator": "template", "candidates": [c.id for c in items]})


def template_reasoning(job: Job, seed: int = 0) -> dict:
    rng, items = random.Random(f"{seed}/{job.id}"), job.items
    source = {"generator": "template", "task": job.task, "candidates": [c.id for c in items]}
    if job.task == "match":
        c, claim = items[0], job.params["claim"]
        yes = as_phrase(claim) == as_phrase(c.caption)
        verb = "contains" if c.modality == "audio" else "shows"
        answer = f"{'Yes' if yes else 'No'}, this {NOUN[c.modality]} {verb}: {as_phrase(c.caption)}."
        return _record(job, rng.choice(MATCH).format(noun=NOUN[c.modality], claim=as_phrase(claim)),
                       answer, [], source)
    if job.task == "which":
        t = job.params["answer"]
        return _record(job, rng.choice(WHICH).format(n=NUMBER[len(items)], claim=as_phrase(items[t].caption)),
                       f"The {ORDINAL[t]} one, the {NOUN[items[t].modality]}.", [], source)
    kinds = [A_NOUN[c.modality] for c in items]  # task == "count"
    listed = ", ".join(kinds[:-1]) + " and " + kinds[-1] if len(kinds) > 1 else kinds[0]
    return _record(job, rng.choice(COUNT), f"{NUMBER[len(items)].capitalize()}: {listed}.", [], source)


# ----------------------------------------------------------------------------- driver

def run(jobs: list[Job], out: str, make, workers: int = 1) -> Counter:
    """Make the records of `jobs` not yet in `out` and append them (resumable: a rerun skips ids
    already there). `make(job)` returns a record or raises InvalidAnswer; invalid answers are
    counted, dropped, and appended to <out>.rejected.jsonl for reading. ApiError stops the run."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    done = set()
    if os.path.exists(out):
        done = {rec["id"] for _, rec, _ in scan_jsonl(out) if isinstance(rec, dict) and "id" in rec}
        with open(out, "rb+") as fh:
            if fh.seek(0, os.SEEK_END) > 0:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":  # killed mid-write: end the partial line (it is not valid JSON)
                    fh.write(b"\n")
    pending = [j for j in jobs if j.id not in done]
    stats = Counter(skipped=len(jobs) - len(pending))

    def attempt(job):
        try:
            return make(job)
        except InvalidAnswer as e:
            return e

    with open(out, "a", encoding="utf-8") as fh, ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(pending), 8 * workers):  # bounded windows keep memory flat
            chunk = pending[start:start + 8 * workers]
            for job, result in zip(chunk, pool.map(attempt, chunk)):  # map keeps job order
                if isinstance(result, InvalidAnswer):
                    stats["invalid"] += 1
                    stats[f"invalid: {result.reason}"] += 1
                    with open(out + ".rejected.jsonl", "a", encoding="utf-8") as rej:  # rare: open when needed
                        append_jsonl(rej, {"id": job.id, "reason": result.reason, "detail": result.detail})
                else:
                    append_jsonl(fh, result)
                    stats["written"] += 1
                    stats[result["kind"]] += 1
    return stats


def main(argv=None):
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--captions", nargs="+", required=True, help="caption records (.jsonl from data/convert.py)")
    p.add_argument("--out", required=True, help="output .jsonl; appended to, finished ids are skipped")
    p.add_argument("--seeds", default=os.path.join(HERE, "seeds.jsonl"), help="seed examples (.jsonl)")
    p.add_argument("--refs", default=os.path.join(HERE, "language_refs.txt"), help="language references")
    p.add_argument("--num-output", type=int, default=100, help="output-side records (LLM or --template)")
    p.add_argument("--num-input", type=int, default=20, help="input-side records (templates)")
    p.add_argument("--num-reasoning", type=int, default=20, help="reasoning records (templates)")
    p.add_argument("--seed", type=int, default=0, help="random seed: same seed + inputs = same jobs")
    p.add_argument("--id-prefix", default="gen", help="record ids are <prefix>-out-000000 etc.")
    p.add_argument("--template", action="store_true", help="offline: fill seeds instead of calling an LLM")
    p.add_argument("--print-prompt", action="store_true", help="print the first output job's prompt and exit")
    p.add_argument("--api-base", default=env("MODAVERSE_API_BASE"),
                   help="OpenAI-compatible base URL, e.g. https://api.openai.com/v1 (env MODAVERSE_API_BASE); "
                        "the key is read from env MODAVERSE_API_KEY only")
    p.add_argument("--model", default=env("MODAVERSE_MODEL", "gpt-4o-mini"), help="chat model (env MODAVERSE_MODEL)")
    p.add_argument("--shots", type=int, default=5, help="seed examples per prompt")
    p.add_argument("--refs-per-model", type=int, default=3, help="language references per invoked model")
    p.add_argument("--max-prompt-words", type=int, default=60, help="longer invocation prompts are invalid")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature of the chat model")
    p.add_argument("--workers", type=int, default=1, help="parallel requests")
    p.add_argument("--retries", type=int, default=5, help="retries per request (429, 5xx, network)")
    p.add_argument("--backoff", type=float, default=2.0, help="seconds before the first retry, doubling")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    args = p.parse_args(argv)

    try:
        out_dir = os.path.dirname(os.path.abspath(args.out))
        seeds, refs = load_seeds(args.seeds), load_refs(args.refs)
        jobs = plan(load_candidates(args.captions, out_dir), seeds, args.num_output, args.num_input,
                    args.num_reasoning, args.seed, args.id_prefix)
    except DataError as e:
        sys.exit(f"error: {e}")
    prompt = lambda job: build_prompt(job, seeds, refs, args.shots, args.refs_per_model, args.max_prompt_words)
    if args.print_prompt:
        first = next((j for j in jobs if j.kind == "output"), None)
        if first is None:
            sys.exit("error: no output jobs to show (--num-output 0)")
        print("\n\n".join(prompt(first)))
        return
    client = None
    if not args.template:
        if not args.api_base:
            sys.exit("error: no API endpoint: set MODAVERSE_API_BASE (and MODAVERSE_API_KEY), "
                     "or pass --template for the offline mode")
        client = ChatClient(args.api_base, api_key=env("MODAVERSE_API_KEY", ""), model=args.model,
                            temperature=args.temperature, timeout=args.timeout, retries=args.retries,
                            backoff=args.backoff)

    def make(job):
        if job.kind == "input":
            return template_input(job, args.seed)
        if job.kind == "reasoning":
            return template_reasoning(job, args.seed)
        if client is None:
            return template_output(job, refs, args.seed)
        return parse_answer(client.complete(*prompt(job)), job, f"api:{args.model}", args.max_prompt_words)

    t0 = time.time()
    try:
        stats = run(jobs, args.out, make, args.workers)
    except ApiError as e:
        sys.exit(f"error: {e}\nrecords written so far are kept; rerun the same command to resume")
    print(f"{args.out}: {dict(stats)}" + (f", retries {dict(client.retried)}" if client else "")
          + f" in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
