"""How much a response tells about its prompt: a reference-free term for the pointwise labeler.

``information(prompt, response) = (log P(prompt | response) − log P(prompt)) / tokens(prompt)``

under the labeler's own model: the pointwise mutual information between the two, in nats per prompt
token. By Bayes it equals ``log P(response | prompt) − log P(response)`` (per prompt token), so it is
high for a response that is far more likely given *its* prompt than in general: one that is
specific to the post, and low for a generic, off-topic or invented one. It is the contrastive idea
of "the right post against a mismatched one", taken against the model's marginal instead of a
single other post (one mismatched post was anti-aligned on the quickstart's calibration pairs).

Why it is offered (measured in BENCHMARKS.md, issue 13): on the quickstart's 50 human calibration
pairs the 135M model's yes/no principles cannot see topic (0.5 on off-topic summaries) and barely see
wrong facts (0.6), while this term gets both right (1.0 and 1.0). It has the opposite blind spots: it
prefers a response that copies the post, and a longer one carries more information. It enters the
pointwise labeler as one more log-odds column (``labeler.informationWeight`` × information), so the
principles and it correct each other in scores and preferences alike.

Both log-probabilities are read in one template, :data:`CONTEXT`, with and without the response, so
the template's own tokens cancel. The prompt-only baseline is computed once per prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["CONTEXT", "INFORMATION_TERM", "PromptInformation"]

# The information term's name where per-term figures are reported (calibration's by-term alignment).
INFORMATION_TERM = "(information about the prompt, x labeler.informationWeight)"

# Ends in a newline, so the prompt's first token does not merge with the context's last (the seam
# would tokenise differently from the full text otherwise, cf. rlaif_trainer.feedback.hf).
CONTEXT = "Response: {response}\nPrompt:\n"


class PromptInformation:
    """Batched ``information(prompt, response)`` on a local causal LM (frozen while it is used)."""

    def __init__(self, model: Any, tokenizer: Any, *, batch_size: int = 8) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = max(1, int(batch_size))
        self._baseline: dict[str, tuple[float, int]] = {}  # prompt -> (log P(prompt), its tokens)

    def clear_cache(self) -> None:
        """Forget the per-prompt baselines (after the weights it sees change)."""
        self._baseline.clear()

    def prompt_logprob(self, contexts: Sequence[str], prompts: Sequence[str]) -> list[tuple[float, int]]:
        """``(log P(prompt | context) summed over the prompt's tokens, the number of those tokens)``."""
        import torch

        from rlaif_trainer.modeling.generation import response_logprobs, tokenize_prompts

        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        device = next(self.model.parameters()).device
        out: list[tuple[float, int]] = []
        for s in range(0, len(prompts), self.batch_size):
            # The context left-padded and the prompt right-padded: the layout of a sampled batch.
            q_ids, q_mask = tokenize_prompts(self.tokenizer, list(contexts[s : s + self.batch_size]), device)
            tgt = [
                self.tokenizer.encode(p, add_special_tokens=False) for p in prompts[s : s + self.batch_size]
            ]
            width = max(map(len, tgt))
            r_ids = torch.tensor([t + [pad] * (width - len(t)) for t in tgt], device=device)
            r_mask = torch.tensor([[1.0] * len(t) + [0.0] * (width - len(t)) for t in tgt], device=device)
            with torch.no_grad():
                logp, _, _ = response_logprobs(self.model, q_ids, q_mask, r_ids, r_mask, temperature=1.0)
            out.extend((float(x), len(t)) for x, t in zip(logp.sum(dim=1).tolist(), tgt, strict=True))
        return out

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """Nats of the prompt explained by the response, per prompt token (see the module docstring)."""
        if len(prompts) != len(responses):
            raise ValueError("prompts and responses differ in length")
        new = [p for p in dict.fromkeys(prompts) if p not in self._baseline]
        if new:
            base = self.prompt_logprob([CONTEXT.format(response="")] * len(new), new)
            self._baseline.update(zip(new, base, strict=True))
        given = self.prompt_logprob([CONTEXT.format(response=r) for r in responses], prompts)
        return [(g - self._baseline[p][0]) / max(1, n) for p, (g, n) in zip(prompts, given, strict=True)]
