"""Tiny, fully local models for tests and benchmarks.

``build_tiny_model(dir)`` trains a small byte-level BPE tokenizer on a built-in corpus with the
``tokenizers`` library and saves a randomly initialised ``LlamaForCausalLM`` (hidden size 64, two
layers) next to it in Hugging Face format, with a ChatML-style chat template. Nothing is downloaded.

Guarantees that the rest of the project relies on:

* ``"1"`` ... ``"9"``, ``"Yes"`` and ``"No"`` each encode to exactly one token (digits are split
  individually by the pre-tokenizer, so ``"10"`` is two tokens, as in SmolLM2's tokenizer);
* the tokenizer has ``eos``/``pad`` tokens and a chat template, so ``apply_chat_template`` works;
* building is deterministic for a given ``seed``.

The result loads with ``AutoModelForCausalLM.from_pretrained`` /
``AutoModelForSequenceClassification.from_pretrained`` and ``AutoTokenizer.from_pretrained``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "CHAT_TEMPLATE",
    "SINGLE_TOKEN_WORDS",
    "SPECIAL_TOKENS",
    "SYNTHETIC_WORDS",
    "TINY_CORPUS",
    "build_tiny_model",
    "build_tiny_tokenizer",
    "synthetic_pairs",
    "train_chat_tokenizer",
    "trl_preference_rows",
]

#: A ChatML-style template (the same shape as SmolLM2's).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

TINY_CORPUS: list[str] = [
    "A good summary captures the most important points of the original text.",
    "Preferred Response=1",
    "Preferred Response=2",
    "Which of the two responses is better? Response 1 or Response 2.",
    "Is the response helpful, honest and harmless? Answer Yes or No.",
    "Yes",
    "No",
    "Yes, the summary is faithful to the text.",
    "No, the response is irrelevant to the question.",
    "Rate the response on a scale from 1 to 10. Score: 7",
    "The quick brown fox jumps over the lazy dog.",
    "Text: The city council approved a new park near the river on Monday.",
    "Summary: The council approved a riverside park.",
    "Question: What is the capital of France? Answer: Paris is the capital of France.",
    "Write a short poem about the sea. The waves roll in and out again.",
    "Explain why the sky is blue. Sunlight scatters off molecules in the air.",
    "Give me a recipe for pancakes. Mix flour, eggs and milk, then fry.",
    "A helpful assistant answers the question clearly and briefly.",
    "Rationale: Response 1 is more accurate and concise than Response 2.",
    "You are an expert rater of summaries. Given a piece of text and two of its possible summaries,",
    "output 1 or 2 to indicate which summary best adheres to coherence, accuracy, coverage,",
    "and overall quality as defined above.",
    "user assistant system",
    "0 1 2 3 4 5 6 7 8 9 10",
]


#: A small vocabulary of plain words for synthetic preference pairs (benchmarks and tests).
SYNTHETIC_WORDS: tuple[str, ...] = tuple(
    [
        "the",
        "model",
        "answers",
        "the",
        "question",
        "with",
        "care",
        "and",
        "gives",
        "a",
        "short",
        "clear",
        "reason",
        "for",
        "each",
        "step",
        "it",
        "takes",
        "while",
        "staying",
        "polite",
        "honest",
        "and",
        "helpful",
        "to",
        "the",
        "user",
        "who",
        "asked",
    ]
)

#: Words that must each be a single token, as in SmolLM2's tokenizer: the labelers read them.
SINGLE_TOKEN_WORDS: tuple[str, ...] = (*(str(i) for i in range(1, 10)), "Yes", "No")


def synthetic_pairs(
    n: int, *, prompt_words: tuple[int, int], response_words: tuple[int, int], seed: int = 0
) -> list[dict[str, Any]]:
    """``n`` hard-labelled pairs of :data:`SYNTHETIC_WORDS` text (the shorter response preferred),
    prompt and response lengths drawn uniformly from the given inclusive word ranges, seeded."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        lp = rng.randint(*prompt_words)
        la, lb = rng.randint(*response_words), rng.randint(*response_words)
        out.append(
            {
                "prompt": f"Question {i}: " + " ".join(rng.choice(SYNTHETIC_WORDS) for _ in range(lp)),
                "response_a": " ".join(rng.choice(SYNTHETIC_WORDS) for _ in range(la)),
                "response_b": " ".join(rng.choice(SYNTHETIC_WORDS) for _ in range(lb)),
                "p_a": 1.0 if la < lb else 0.0,
            }
        )
    return out


def trl_preference_rows(
    tokenizer: Any, pairs: Sequence[dict[str, Any]], max_length: int
) -> list[dict[str, Any]]:
    """``pairs`` as TRL's ``RewardTrainer`` takes them pre-tokenized (``chosen_ids``/``rejected_ids``),
    each response encoded as our reward model encodes it, so that a benchmark feeds both trainers
    the very same tokens."""
    from rlaif_trainer.reward_model.batching import encode_response

    rows = []
    for p in pairs:
        a = encode_response(tokenizer, p["prompt"], p["response_a"], max_length)
        b = encode_response(tokenizer, p["prompt"], p["response_b"], max_length)
        rows.append(
            {"chosen_ids": a, "rejected_ids": b} if p["p_a"] > 0.5 else {"chosen_ids": b, "rejected_ids": a}
        )
    return rows


def train_chat_tokenizer(corpus: Sequence[str], vocab_size: int) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``corpus``, with the tiny model's
    pre-tokenizer (digits split one by one), special tokens, ChatML template and left padding.

    Raises when a word of :data:`SINGLE_TOKEN_WORDS` is not one token: the corpus must hold them
    often enough for BPE to merge them (``TINY_CORPUS * 4 + ["Yes No"] * 50`` does).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>"],
        padding_side="left",
    )
    fast.chat_template = CHAT_TEMPLATE
    for word in SINGLE_TOKEN_WORDS:
        ids = fast.encode(word, add_special_tokens=False)
        if len(ids) != 1:
            raise AssertionError(f"tokenizer: {word!r} is not a single token: {ids}")
    return fast


def build_tiny_tokenizer(out_dir: str | os.PathLike[str], *, vocab_size: int = 600):
    """Train a byte-level BPE tokenizer on :data:`TINY_CORPUS` and save it (HF fast tokenizer files).

    Returns the loaded ``PreTrainedTokenizerFast``.
    """
    # Repeat the answer words so that BPE merges them into single tokens.
    fast = train_chat_tokenizer(TINY_CORPUS * 4 + ["Yes No"] * 50, vocab_size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out)
    return fast


def build_tiny_model(
    out_dir: str | os.PathLike[str],
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 2048,
    seed: int = 0,
) -> Path:
    """Build a tiny random ``LlamaForCausalLM`` plus tokenizer in ``out_dir`` and return the path.

    The directory is written atomically (a temporary sibling, then a rename); when ``out_dir``
    already holds a finished build (``config.json`` and ``model.safetensors``) it is reused.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tok = build_tiny_tokenizer(tmp)
        config = LlamaConfig(
            vocab_size=len(tok),
            hidden_size=hidden_size,
            intermediate_size=intermediate_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_kv_heads,
            max_position_embeddings=max_position_embeddings,
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            bos_token_id=None,
        )
        gen = torch.random.fork_rng()
        with gen:
            torch.manual_seed(seed)
            model = LlamaForCausalLM(config)
        model.generation_config.pad_token_id = tok.pad_token_id
        model.generation_config.eos_token_id = tok.eos_token_id
        model.save_pretrained(tmp, safe_serialization=True)
        (tmp / "rlaif_tiny.json").write_text(
            json.dumps({"seed": seed, "kind": "rlaif-operator tiny test model"})
        )
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
