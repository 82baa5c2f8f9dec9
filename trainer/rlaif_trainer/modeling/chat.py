"""The one chat-template rule for a raw prompt, shared by candidate sampling, RL and evaluation:
the prompt as a single user turn with the generation prompt appended, when the tokenizer has a chat
template; the bare prompt otherwise. (The labelers' prompts, which split the template around a
cached head, use :class:`rlaif_trainer.feedback.prompts.ChatFormatter`.)"""

from __future__ import annotations

from typing import Any

__all__ = ["chat_prompt_ids", "format_prompt", "format_prompts"]


def _has_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def format_prompt(tokenizer: Any, prompt: str) -> str:
    """``prompt`` as the text the model continues."""
    if _has_template(tokenizer):
        text: str = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        return text
    return prompt


def format_prompts(tokenizer: Any, prompts: list[str]) -> list[str]:
    """:func:`format_prompt` for each prompt."""
    return [format_prompt(tokenizer, p) for p in prompts]


def chat_prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """Token ids of :func:`format_prompt` (a template brings its own special tokens; a bare prompt
    gets the tokenizer's)."""
    if _has_template(tokenizer):
        return list(tokenizer.encode(format_prompt(tokenizer, prompt), add_special_tokens=False))
    return list(tokenizer.encode(prompt, add_special_tokens=True))
