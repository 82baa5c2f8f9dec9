"""The one chat-template rule for a raw prompt, shared by candidate sampling, RL and evaluation:
the prompt as a single user turn with the generation prompt appended, when the tokenizer has a chat
template; the bare prompt otherwise. (The labelers' prompts, which split the template around a
cached head, use :class:`rlaif_trainer.feedback.prompts.ChatFormatter`.)"""

from __future__ import annotations

from typing import Any

__all__ = ["format_prompt", "format_prompts"]


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
