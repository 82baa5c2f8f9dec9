"""The ``evaluate`` stage: win rate of the trained policy against the initial policy, by the AI judge.

For each held-out prompt (``dataset.evalPrompts``, or the last 10% of ``dataset.prompts``; at most
``evaluation.samples``) one response is sampled from the trained policy and one from the initial
policy, with the RL sampling settings and the *same* random stream for both (common random
numbers: the difference between the two responses comes from the policies, not the dice). The
judge (``evaluation.judge``, default the labeler) is the position-debiased AI labeler; its soft
preference ``p`` that the trained policy's response is better is turned into

* ``win_rate``: the share of prompts where ``p > 0.5`` (a tie, ``p == 0.5``, counts half), with
  a 95% Wilson score interval (:func:`rlaif_trainer.feedback.winrate.win_rate_from_probs`);
* ``soft_win_rate``: the mean of ``p``, with a normal 95% interval;
* ``length_controlled``: RL tends to lengthen responses, and judges tend to like length, so the
  per-prompt outcome is regressed on the length difference (tokens, trained − initial): the
  intercept is the win rate *at equal length*, with a 95% interval from its standard error; the
  outcome is also bucketed by length difference.

Outputs (``<eval>/``, atomically, then ``DONE``): ``report.json``, ``samples.jsonl`` (prompt, both
responses, ``p``, lengths), ``training_curves.png`` (reward, KL and length over RL steps, from the
policy's ``metrics.jsonl``), ``summary.json``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rlaif_trainer import metrics as prom
from rlaif_trainer.errors import BadInputError
from rlaif_trainer.feedback.lengthstats import length_controlled
from rlaif_trainer.stages.common import device as stage_device
from rlaif_trainer.stages.common import resumed_summary, shares_policy_weights

log = logging.getLogger(__name__)

__all__ = ["evaluate", "run"]


# --------------------------------------------------------------------------------------------------
# statistics (pure, tested against hand computations)
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# the stage
# --------------------------------------------------------------------------------------------------


def _adapter_dir(path: Path) -> Path | None:
    """The LoRA adapter inside an rl artifact (``<policy>/adapter``) or an adapter dir itself."""
    if (path / "adapter" / "adapter_config.json").is_file():
        return path / "adapter"
    if (path / "adapter_config.json").is_file():
        return path
    return None


class _Policies:
    """The trained and initial policies, sharing one copy of the base weights when the trained one is LoRA."""

    def __init__(self, spec, policy_path: Path, device) -> None:
        from rlaif_trainer.modeling.loading import load_causal_lm

        adapter = _adapter_dir(policy_path)
        base, self.tokenizer = load_causal_lm(spec.policy.model, device=device)
        if adapter is not None:
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(base, str(adapter))
            self.initial = None
        elif (policy_path / "config.json").is_file():
            self.model, _ = load_causal_lm(str(policy_path), device=device)
            self.initial = base
        else:
            raise BadInputError(f"{policy_path}: neither a LoRA adapter nor a model directory")
        self.model.eval()
        if self.initial is not None:
            self.initial.eval()

    @contextlib.contextmanager
    def initial_policy(self) -> Iterator[Any]:
        if self.initial is not None:
            yield self.initial
        else:
            with self.model.disable_adapter():
                yield self.model

    @contextlib.contextmanager
    def base_weights(self) -> Iterator[Any]:
        """The untrained weights (for a judge that is the policy's own base model)."""
        with self.initial_policy() as m:
            yield m


def _sample(
    model, tokenizer, prompts: list[str], *, seed: int, spec, batch_size: int, progress: bool, desc: str
):
    import torch

    from rlaif_trainer.modeling.chat import format_prompts
    from rlaif_trainer.modeling.generation import generate

    texts: list[str] = []
    lengths: list[int] = []
    it: Any = range(0, len(prompts), batch_size)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=desc, unit="batch")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i in it:
            chunk = prompts[i : i + batch_size]
            g = generate(
                model,
                tokenizer,
                format_prompts(tokenizer, chunk),
                max_new_tokens=spec.evaluation.max_new_tokens or spec.rl.max_new_tokens,
                temperature=spec.rl.temperature,
                top_p=spec.rl.top_p,
            )
            texts.extend(g.texts)
            lengths.extend(int(x) for x in g.lengths.tolist())
    return texts, lengths


def _policy_meta(policy_path: Path) -> dict[str, Any]:
    meta = policy_path / "policy.json"
    return json.loads(meta.read_text()) if meta.is_file() else {}


def _read_metrics(policy_path: Path) -> list[dict[str, Any]]:
    path = policy_path / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def evaluate(
    config,
    *,
    progress: bool = True,
    judge_fn: Callable[[list[str], list[str], list[str]], list[Any]] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """Generate, judge and compute the report. Returns ``(report, samples, rl_metrics)``.

    ``judge_fn(prompts, trained, initial) -> [PreferenceResult]`` (A = trained) overrides the
    configured judge (tests).
    """
    from rlaif_trainer.data.prompts import split_prompts

    spec = config.spec
    _, held_out = split_prompts(spec)
    prompts = held_out[: spec.evaluation.samples]
    policy_path = Path(spec.evaluation.policy or config.artifacts.policy)
    if not policy_path.exists():
        raise BadInputError(f"no trained policy at {policy_path}: run the rl stage or set evaluation.policy")
    device = stage_device()
    pol = _Policies(spec, policy_path, device)
    tok = pol.tokenizer
    t0 = time.perf_counter()
    trained, len_t = _sample(
        pol.model,
        tok,
        prompts,
        seed=config.seed + 10_007,
        spec=spec,
        batch_size=16,
        progress=progress,
        desc="eval: trained",
    )
    with pol.initial_policy() as m:
        initial, len_i = _sample(
            m,
            tok,
            prompts,
            seed=config.seed + 10_007,
            spec=spec,
            batch_size=16,
            progress=progress,
            desc="eval: initial",
        )
    t_gen = time.perf_counter() - t0

    judge_spec = spec.judge()
    if judge_fn is None:
        if judge_spec is None:
            raise BadInputError("the evaluate stage needs a judge: set evaluation.judge or labeler")
        from rlaif_trainer.feedback.base import JUDGE_API_KEY_ENV
        from rlaif_trainer.feedback.build import build_labeler

        shares = shares_policy_weights(judge_spec, spec)
        if shares:
            # The judge is the initial model itself: reuse its weights instead of loading a copy.
            base = pol.model if pol.initial is None else pol.initial
            labeler = build_labeler(judge_spec, model=base, tokenizer=tok, api_key_env=JUDGE_API_KEY_ENV)

            def judge_fn(pr, a, b):
                with pol.base_weights():
                    return labeler.preference(pr, a, b)
        else:
            labeler = build_labeler(judge_spec, api_key_env=JUDGE_API_KEY_ENV, device=device)

            def judge_fn(pr, a, b):
                return labeler.preference(pr, a, b)

    t1 = time.perf_counter()
    results: list[Any] = []
    bs = 16
    it: Any = range(0, len(prompts), bs)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="eval: judge", unit="batch")
    for i in it:
        t_batch = time.perf_counter()
        batch = judge_fn(prompts[i : i + bs], trained[i : i + bs], initial[i : i + bs])
        results.extend(batch)
        prom.record_step(
            samples=len(batch), seconds=time.perf_counter() - t_batch, progress=len(results) / len(prompts)
        )
    t_judge = time.perf_counter() - t1

    from rlaif_trainer.feedback.winrate import win_rate_from_probs

    p = [float(r.p_a) for r in results]
    stats = win_rate_from_probs(p, [getattr(r, "consistent", None) for r in results])
    stats["ci_method"] = "Wilson score interval (hard win rate); normal interval (soft win rate)"
    diff = [a - b for a, b in zip(len_t, len_i, strict=True)]
    lc = length_controlled(p, diff)
    samples = [
        {"prompt": pr, "trained": a, "initial": b, "p_trained": pp, "len_trained": la, "len_initial": lb}
        for pr, a, b, pp, la, lb in zip(prompts, trained, initial, p, len_t, len_i, strict=True)
    ]
    rl_metrics = _read_metrics(policy_path)
    report = {
        "stage": "evaluate",
        "policy": str(policy_path),
        "initial_policy": spec.policy.model,
        "judge": None
        if judge_spec is None
        else {"provider": judge_spec.provider, "model": judge_spec.model, "mode": judge_spec.mode},
        "prompts": len(prompts),
        **stats,
        "length_controlled": lc,
        "mean_length_trained": sum(len_t) / max(len(len_t), 1),
        "mean_length_initial": sum(len_i) / max(len(len_i), 1),
        "identical_responses": sum(1 for a, b in zip(trained, initial, strict=True) if a == b),
        "sampling": {
            "temperature": spec.rl.temperature,
            "top_p": spec.rl.top_p,
            "max_new_tokens": spec.evaluation.max_new_tokens or spec.rl.max_new_tokens,
            "common_random_numbers": True,
        },
        "generation_s": round(t_gen, 3),
        "judge_s": round(t_judge, 3),
        "rl_steps": len(rl_metrics),
        "rl_algorithm": _policy_meta(policy_path).get("algorithm"),
    }
    return report, samples, rl_metrics


def summary_of(report: dict[str, Any], wall_s: float) -> dict[str, Any]:
    lc = report["length_controlled"]
    return {
        "stage": "evaluate",
        "prompts": report["prompts"],
        "win_rate_vs_initial": round(report["win_rate"], 4),
        "win_rate_ci_low": round(report["win_rate_ci95"][0], 4),
        "win_rate_ci_high": round(report["win_rate_ci95"][1], 4),
        "soft_win_rate": round(report["soft_win_rate"], 4),
        "win_rate_equal_length": round(lc["win_rate_at_equal_length"], 4),
        "ties": report["ties"],
        "judge_consistency": report.get("consistency_rate"),
        "mean_length_trained": round(report["mean_length_trained"], 2),
        "mean_length_initial": round(report["mean_length_initial"], 2),
        "wall_s": round(wall_s, 3),
    }


def run(config, *, progress: bool = True) -> dict[str, Any]:
    """The ``evaluate`` stage: write ``<eval>/`` atomically with a DONE marker; return the summary."""
    from rlaif_trainer.data.artifacts import finalize_dir, partial_dir

    out = Path(config.artifacts.eval)
    if (done := resumed_summary(out)) is not None:
        return done
    t0 = time.perf_counter()
    report, samples, rl_metrics = evaluate(config, progress=progress)
    summary = summary_of(report, time.perf_counter() - t0)
    work = partial_dir(out)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    with (work / "samples.jsonl").open("w") as handle:
        for s in samples:
            handle.write(json.dumps(s) + "\n")
    if rl_metrics:
        from rlaif_trainer.plots import plot_training_curves

        algo = report.get("rl_algorithm") or ""
        plot_training_curves(
            rl_metrics, work / "training_curves.png", title=f"RL training: {config.job} {algo}".strip()
        )
        report["plot"] = "training_curves.png"
    (work / "report.json").write_text(json.dumps(report, indent=2))
    (work / "summary.json").write_text(json.dumps(summary, indent=2))
    finalize_dir(work, out, summary)
    log.info(
        "evaluate: win rate %.3f [%.3f, %.3f] over %d prompts (equal-length %.3f)",
        report["win_rate"],
        *report["win_rate_ci95"],
        report["prompts"],
        report["length_controlled"]["win_rate_at_equal_length"],
    )
    return summary
