"""The labeler's prompts, in the structure of Lee et al. (2023), §2.1 and Appendix (our own wording).

Pairwise prompt::

    <preamble>                                   ← "base", "detailed", or custom text
    »»»» Example »»»»                            ← optional few-shot exemplars
    Prompt - ...
    Response 1 - ...
    Response 2 - ...
    [Rationale - ...]
    Preferred Response=1
    »»»» Follow the instructions and the example(s) above »»»»
    Prompt - <prompt>
    Response 1 - <first>
    Response 2 - <second>
    Preferred Response=                          ← the ending; the next token is "1" or "2"

Two-step chain-of-thought (the paper's §2.1.2): step one ends the pair with the reasoning
instruction and opens the answer with ``Rationale -``, and the rationale is generated there; step
two is step one's text with the rationale appended and then ``Preferred Response=``, so the
instruction stays in the prompt and the rationale stays in the labeler's own (assistant) turn::

    ...
    Response 2 - <second>
    Consider the relevance, accuracy, ... and explain which one is better.
                                                 ← the assistant turn, with a chat template
    Rationale - <generated rationale>
    Preferred Response=

Every prompt is split into a *shared head* (preamble and exemplars, identical for every pair) and a
per-item *body*. With a chat template, the head and body form the user message and the ending
opens the assistant turn; ``PromptParts`` carries the rendered text of the head (everything up to
the body), of the body, and of the tail (end of the user turn, start of the assistant turn,
ending). The HF labeler tokenizes the head once and caches its keys/values.

Pointwise prompt (one response, one yes/no principle; RLBFF-style binary feedback)::

    <pointwise preamble>
    Prompt - <prompt>
    Response - <response>
    Question - <principle> Answer Yes or No.
                                                 ← assistant turn; next token "Yes" or "No"

Direct (d-RLAIF) score prompt: the score preamble, the prompt and response, then
``Score (1-10)=``; see :mod:`rlaif_trainer.feedback.scoring`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

PAIRWISE_ENDING = "Preferred Response="
COT_ENDING = "Rationale -"
SCORE_ENDING_TEMPLATE = "Score (1-{n})="

BASE_PREAMBLE = (
    "You are an expert rater of AI assistant responses. A good response follows the user's request, "
    "is accurate, relevant and complete, and is no longer than it needs to be.\n"
    "Given a prompt and two possible responses, output 1 or 2 to indicate which response is better."
)

DETAILED_PREAMBLE = (
    "You are an expert rater of AI assistant responses. Judge each response on these criteria:\n"
    "1. Relevance: it addresses what the prompt actually asks, and does not drift to other topics.\n"
    "2. Accuracy: every statement is correct and consistent with the prompt; nothing is invented.\n"
    "3. Completeness: it covers the important parts of the request.\n"
    "4. Clarity: it is well organised, fluent and easy to follow.\n"
    "5. Concision: it contains no needless repetition or filler.\n"
    "6. Harmlessness: it is safe, honest and respectful.\n"
    "Weigh the criteria together to form an overall judgement of quality.\n"
    "Given a prompt and two possible responses, output 1 or 2 to indicate which response is better "
    "overall according to the criteria above."
)

POINTWISE_PREAMBLE = (
    "You are an expert rater of AI assistant responses. You will see a prompt, one response to it, "
    "and a yes/no question about the response. Answer the question with Yes or No only."
)

SCORE_PREAMBLE = (
    "You are an expert rater of AI assistant responses. A good response follows the user's request, "
    "is accurate, relevant and complete, and is no longer than it needs to be.\n"
    "Rate the response to the prompt on a scale from 1 (very bad) to {n} (excellent). "
    "Output only the number."
)

COT_INSTRUCTION = (
    "Consider the relevance, accuracy, completeness and overall quality of each response, "
    "and explain which one is better."
)

EXAMPLE_OPEN = "»»»» Example »»»»"
EXAMPLE_CLOSE = "»»»» Follow the instructions and the example(s) above »»»»"

_SENTINEL = "\u0000RLAIF_BODY\u0000"


def preamble_text(preamble: str) -> str:
    """``base`` / ``detailed`` → the built-in texts; anything else is custom text, used as is."""
    if preamble == "base":
        return BASE_PREAMBLE
    if preamble == "detailed":
        return DETAILED_PREAMBLE
    return preamble.strip()


def _pair_block(prompt: str, first: str, second: str) -> str:
    return f"Prompt - {prompt.strip()}\nResponse 1 - {first.strip()}\nResponse 2 - {second.strip()}\n"


def few_shot_block(examples: Sequence[Any], *, chain_of_thought: bool = False) -> str:
    """Render few-shot exemplars (objects with prompt, response_a, response_b, preferred, rationale)."""
    if not examples:
        return ""
    parts = []
    for ex in examples:
        text = EXAMPLE_OPEN + "\n" + _pair_block(ex.prompt, ex.response_a, ex.response_b)
        rationale = getattr(ex, "rationale", None)
        if rationale and chain_of_thought:
            text += f"{COT_ENDING} {rationale.strip()}\n"
        text += f"{PAIRWISE_ENDING}{int(ex.preferred)}\n"
        parts.append(text)
    return "".join(parts) + EXAMPLE_CLOSE + "\n"


@dataclass(frozen=True)
class PromptParts:
    """A prompt cut into the shared ``head``, the per-item ``body``, and the ``tail`` (ending)."""

    head: str
    body: str
    tail: str

    @property
    def text(self) -> str:
        return self.head + self.body + self.tail


class ChatFormatter:
    """Wrap ``user content = head + body`` in the tokenizer's chat template (when it has one).

    The template is rendered once with a sentinel in place of the body, and split there, so the
    head is the same string for every item (which is what makes prefix caching exact).
    """

    def __init__(self, tokenizer: Any | None, *, use_chat_template: bool = True) -> None:
        self.pre = ""
        self.post = ""
        if tokenizer is not None and use_chat_template and getattr(tokenizer, "chat_template", None):
            rendered = tokenizer.apply_chat_template(
                [{"role": "user", "content": _SENTINEL}], tokenize=False, add_generation_prompt=True
            )
            if isinstance(rendered, str) and rendered.count(_SENTINEL) == 1:
                self.pre, self.post = rendered.split(_SENTINEL)
        self.chat = bool(self.pre or self.post)

    def parts(self, head: str, body: str, ending: str) -> PromptParts:
        if self.chat:
            return PromptParts(self.pre + head, body, self.post + ending)
        return PromptParts(head, body, ending)


def pairwise_head(preamble: str, few_shot: Sequence[Any] = (), *, chain_of_thought: bool = False) -> str:
    return preamble_text(preamble) + "\n\n" + few_shot_block(few_shot, chain_of_thought=chain_of_thought)


def pairwise_body(prompt: str, first: str, second: str, rationale: str | None = None) -> str:
    body = _pair_block(prompt, first, second)
    if rationale is not None:
        body += f"{COT_ENDING} {rationale.strip()}\n"
    return body


def cot_body(prompt: str, first: str, second: str) -> str:
    """Step one of two-step chain-of-thought: ask for a rationale (generated greedily)."""
    return _pair_block(prompt, first, second) + COT_INSTRUCTION + "\n"


def cot_ending(rationale: str) -> str:
    """Step two of two-step chain-of-thought: the ending after :func:`cot_body`, with the rationale."""
    return f"{COT_ENDING} {rationale.strip()}\n{PAIRWISE_ENDING}"


def pointwise_head(preamble: str | None = None) -> str:
    text = POINTWISE_PREAMBLE if preamble in (None, "base", "detailed") else preamble_text(preamble or "")
    return text + "\n\n"


def pointwise_body(prompt: str, response: str, principle: str) -> str:
    return f"Prompt - {prompt.strip()}\nResponse - {response.strip()}\nQuestion - {principle.strip()} Answer Yes or No.\n"


def score_head(preamble: str | None = None, *, scale: int = 10) -> str:
    if preamble in (None, "base", "detailed"):
        return SCORE_PREAMBLE.format(n=scale) + "\n\n"
    return (
        preamble_text(preamble or "")
        + f"\nRate the response on a scale from 1 to {scale}. Output only the number.\n\n"
    )


def score_body(prompt: str, response: str) -> str:
    return f"Prompt - {prompt.strip()}\nResponse - {response.strip()}\n"


def score_ending(scale: int = 10) -> str:
    return SCORE_ENDING_TEMPLATE.format(n=scale)
