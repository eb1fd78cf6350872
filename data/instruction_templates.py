"""The wording of data/make_instructions.py's records (paper §3.3): the prompt the chat LLM gets, the templates of
the input-side and reasoning records, and how a caption reads as a phrase or a sentence.

Text, not logic: kept apart from make_instructions.py so that the prompt and the phrasings can be read and
changed in one place (a new language, another wording) without reading the planning, the checks or the driver.
Imports nothing.
"""

# ----------------------------------------------------------------------------- the prompt (§3.3)
SYSTEM_PROMPT = (
    "You write training examples for ModaVerse, a multimodal assistant. The assistant reads a user's "
    "instruction, possibly with attached images, audio clips or videos, and answers with a "
    "meta-response: a JSON object with a short 'response' to the user and a list of 'invocations' of "
    "generative models (text-to-image, text-to-video, text-to-audio), each with a 'prompt' written the "
    "way those models' training prompts are written. Answer with ONE JSON object and nothing else.")

USER_TEMPLATE = """\
Seed examples (instruction -> meta-response):
{seed_examples}

Language references: prompts from the generative models' training data. Write every invocation
prompt in this style (short, descriptive, a few comma-separated style tags):
{language_references}

Candidate description: "{description}"
{situation}

Write ONE new, natural user instruction for this situation and the assistant's meta-response.
The meta-response must invoke exactly these models, in this order: {models}.
Do not copy the seed examples. Keep each prompt under {max_words} words.
Answer with one JSON object:
{{"instruction": "...", "response": "...", "invocations": [{{"model": "...", "prompt": "..."}}]}}"""

SITUATION_TEXT_ONLY = ("The user attaches no media. The instruction itself asks for content based "
                       "on the candidate description (it may rephrase it).")
SITUATION_WITH_MEDIA = ("The user attaches {a_noun} whose content is the candidate description. The "
                        "instruction refers to it (\"this {noun}\") without describing it; the "
                        "invocation prompts describe what to generate from it.")
SEED_TEMPLATE = "Instruction: {instruction}\n{attachment}Meta-response: {meta}"
ATTACHMENT = "Attached: {a_noun} of \"{description}\"\n"

# ----------------------------------------------------------------------------- input-side templates
A_NOUN = {"image": "an image", "audio": "an audio clip", "video": "a video"}
ORDINAL = ("first", "second", "third")
NUMBER = {1: "one", 2: "two", 3: "three"}
DESCRIBE_ONE = {
    "image": ["Describe this image.", "What is shown in this picture?",
              "Give a one-sentence caption for this image.", "What do you see here?"],
    "audio": ["Describe this audio clip.", "What can you hear in this recording?",
              "Give a one-sentence caption for this sound.", "What is happening in this audio?"],
    "video": ["Describe this video.", "What happens in this clip?",
              "Give a one-sentence caption for this video.", "Summarise this video in one sentence."],
}
DESCRIBE_SEVERAL = ["Describe each of these {n} items in the order I gave them.",
                    "Here are {n} files. What does each one contain, in order?",
                    "Give a short caption for every attachment, first to last."]

# ----------------------------------------------------------------------------- reasoning templates
WHICH = ["Which of these {n} items matches this description: \"{claim}\"?",
         "One of these attachments fits \"{claim}\". Which one is it?"]
MATCH = ["Does this {noun} match the description \"{claim}\"? Answer yes or no, then explain.",
         "Is \"{claim}\" a fair description of this {noun}?"]
COUNT = ["How many files did I attach, and what kind is each, in order?",
         "List the types of my attachments in the order I sent them."]


# ----------------------------------------------------------------------------- a caption as text
def as_phrase(caption: str) -> str:
    """'A dog runs on a beach.' -> 'a dog runs on a beach' (keeps acronyms like 'TV')."""
    text = " ".join(caption.split()).rstrip(".!")
    if len(text) > 1 and text[0].isupper() and not text[1].isupper():
        text = text[0].lower() + text[1:]
    return text


def as_sentence(caption: str) -> str:
    text = as_phrase(caption)
    return text[:1].upper() + text[1:] + "."
