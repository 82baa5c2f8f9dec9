"""Loading models and tokenizers (local directories, hub ids, or the embedded default), and LoRA."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from rlaif_trainer.modeling.embedded import resolve_model_path

if TYPE_CHECKING:  # pragma: no cover
    import torch


log = logging.getLogger(__name__)


def pick_device(device: Any = None) -> torch.device:
    """``device`` if given, else CUDA when available, else CPU."""
    import torch

    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on a GPU that supports it, fp32 otherwise."""
    import torch

    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_tokenizer(name: str, *, padding_side: str = "left") -> Any:
    """Load a tokenizer, make sure it has a pad token, and set the padding side."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model_path(name))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    tok.padding_side = padding_side
    return tok


def _lora_config(lora: Any, task_type: str) -> Any:
    from peft import LoraConfig

    target = getattr(lora, "target_modules", None) or "all-linear"
    return LoraConfig(
        r=int(lora.r),
        lora_alpha=getattr(lora, "alpha", 2 * lora.r),
        lora_dropout=float(getattr(lora, "dropout", 0.0) or 0.0),
        target_modules=list(target) if not isinstance(target, str) else target,
        task_type=task_type,
    )


def apply_lora(model: Any, lora: Any, *, task_type: str = "CAUSAL_LM") -> Any:
    """Wrap ``model`` in a peft LoRA adapter described by ``lora`` (r, alpha, dropout, target_modules)."""
    from peft import get_peft_model

    return get_peft_model(model, _lora_config(lora, task_type))


def load_causal_lm(
    name: str,
    *,
    lora: Any = None,
    device: Any = None,
    dtype: Any = None,
) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer (left padding, pad token set) on ``device`` in ``dtype``."""
    import torch
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name)
    dev = pick_device(device)
    dt = dtype if dtype is not None else default_dtype(dev)
    if isinstance(dt, str):
        dt = getattr(torch, dt)
    tok = load_tokenizer(path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dt)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    model.to(dev)  # type: ignore[arg-type]
    if lora is not None:
        model = apply_lora(model, lora, task_type="CAUSAL_LM")
    return model, tok


def load_reward_model(
    name: str,
    *,
    lora: Any = None,
    device: Any = None,
    dtype: Any = None,
) -> tuple[Any, Any]:
    """Load ``AutoModelForSequenceClassification`` with one output (a scalar reward) and its tokenizer.

    A causal-LM checkpoint gets a freshly initialised score head; a saved reward model (the
    ``reward`` stage's output) loads as is. The tokenizer pads on the right.
    """
    import torch
    from transformers import AutoModelForSequenceClassification

    path = resolve_model_path(name)
    dev = pick_device(device)
    dt = dtype if dtype is not None else default_dtype(dev)
    if isinstance(dt, str):
        dt = getattr(torch, dt)
    tok = load_tokenizer(path, padding_side="right")
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=dt)
    model.config.pad_token_id = tok.pad_token_id
    model.to(dev)
    if lora is not None:
        model = apply_lora(model, lora, task_type="SEQ_CLS")
    return model, tok
