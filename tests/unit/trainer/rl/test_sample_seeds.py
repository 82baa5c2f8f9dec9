"""Each RL sample draws from its own RNG, seeded by its place in the step's global batch, so a step
split over processes samples what one process samples (issue 14: multi-node equivalence)."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from tests.unit.trainer.rl.test_loop import make_config, make_trainer  # noqa: E402


def _draw(trainer, step: int, rank: int, world: int) -> list[str]:
    from rlaif_trainer.modeling.chat import format_prompts
    from rlaif_trainer.modeling.generation import generate

    # prompts_for_step and sample_generators read only the rank and the world size: a rank's share
    # without starting a process group.
    trainer.rank, trainer.world = rank, world
    prompts = [p for p in trainer.prompts_for_step(step) for _ in range(trainer.k)]
    gen = generate(
        trainer.model,
        trainer.tokenizer,
        format_prompts(trainer.tokenizer, prompts),
        max_new_tokens=12,
        temperature=1.0,
        generators=trainer.sample_generators(step),
    )
    return gen.texts


def test_two_ranks_draw_the_samples_of_one_process(tmp_path: Path, tiny_model_dir: Path):
    cfg = make_config(tmp_path, tiny_model_dir, rl={"batchSize": 4, "samplesPerPrompt": 2})
    trainer = make_trainer(cfg, tiny_model_dir, reward_fn=lambda p, r: [0.0] * len(r))
    one = _draw(trainer, 1, 0, 1)
    r0, r1 = _draw(trainer, 1, 0, 2), _draw(trainer, 1, 1, 2)
    k = trainer.k
    # Rank r holds prompts r, r + 2, ...: interleave the ranks' per-prompt groups back.
    merged = [s for i in range(2) for s in (r0[i * k : (i + 1) * k] + r1[i * k : (i + 1) * k])]
    assert merged == one
    assert len(set(one)) > 1  # the samples are not all alike, so the comparison means something
    # Another step draws other samples.
    assert _draw(trainer, 2, 0, 1) != one
