"""The ``evaluate`` stage: is the trained policy better than the initial one, judged honestly?

Held-out prompts (``dataset.evalPrompts``, or the last 10% of ``dataset.prompts``; at most
``evaluation.samples``) get ``K = evaluation.samplesPerPrompt`` responses from each policy, with
common random numbers: sample ``j`` of the trained and of the initial policy use the same seed, so
the difference between the two comes from the policies, not the dice. Three kinds of evidence, each
a paired comparison over prompts (:mod:`rlaif_trainer.feedback.evalstats`: bootstrap interval, sign-flip
p-value):

(a) **the optimised reward**: the reward RL maximised (the reward model, or the labeler's direct
    score for ``rl.reward: direct``), initial against trained. It must rise if RL worked at all, but
    it is the quantity RL was trained to raise, so on its own it proves nothing about quality.
(b) **the AI judge's win rate** (``evaluation.judge``, default the labeler), with an **A/A null**:
    the same judge on two samples of the initial policy (different seeds), which must sit at 0.5. A
    judge that is the reward source (the same labeler, or the labeler the reward model learned
    from) is saying the same thing as (a): the report says so (``judge_is_reward_source``). The
    length-controlled win rate is AlpacaEval's logistic GLM with a bounded length term.
(c) **a signal the policy never optimised**: ROUGE-L (F-measure, ``rouge-score`` with stemming)
    against hand-written references (``dataset.evalReferences``).

Outputs (``<eval>/``, atomically, then ``DONE``): ``report.json``, ``samples.jsonl`` (prompt, sample
index, both responses, the judge's ``p``, rewards, ROUGE-L, lengths), ``training_curves.png`` (from
the policy's ``metrics.jsonl``), ``summary.json``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from rlaif_api.summaries import EvaluateSummary
from rlaif_trainer import metrics as prom
from rlaif_trainer.errors import BadInputError
from rlaif_trainer.stages.common import device as stage_device
from rlaif_trainer.stages.common import resumed_summary, shares_policy_weights

log = logging.getLogger(__name__)

__all__ = ["evaluate", "run"]


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


def _held_out_records(spec: Any) -> list[dict[str, Any]]:
    """The held-out prompts with their ids, as :func:`rlaif_trainer.data.prompts.split_prompts` splits them."""
    from rlaif_trainer.data.prompts import split_prompt_records

    return split_prompt_records(spec)[1]


def read_references(path: str, ids: Sequence[str]) -> list[str]:
    """The reference of every id in ``ids`` from a ``{id, reference}`` JSONL (bad input names what is missing)."""
    from rlaif_trainer.data.records import read_jsonl

    refs: dict[str, str] = {}
    for line, obj in read_jsonl(Path(path), what="references file"):
        ref = obj.get("reference")
        if obj.get("id") is None or not isinstance(ref, str) or not ref.strip():
            raise BadInputError(f"{path}:{line}: expected {{'id': ..., 'reference': <non-empty text>}}")
        refs[str(obj["id"])] = ref
    missing = [i for i in ids if i not in refs]
    if missing:
        raise BadInputError(
            f"{path} has no reference for {len(missing)} held-out prompt(s), e.g. ids {missing[:5]}"
        )
    return [refs[i] for i in ids]


def rouge_l(references: Sequence[str], responses: Sequence[str]) -> list[float]:
    """ROUGE-L F-measure of each response against its reference (Porter stemming, as is usual)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [scorer.score(r, t)["rougeL"].fmeasure for r, t in zip(references, responses, strict=True)]


def _memoize_logodds(labeler: Any) -> None:
    """Let a pointwise labeler score each (prompt, response) once across the evaluation's calls.

    Valid here because the labeler's weights do not change during the evaluation.
    """
    from rlaif_trainer.feedback.base import PointwiseLabelerBase

    if not isinstance(labeler, PointwiseLabelerBase) or getattr(labeler, "_memoized", False):
        return
    compute = labeler.logodds
    memo: dict[tuple[str, str], list[float]] = {}

    def logodds(prompts: Sequence[str], responses: Sequence[str]) -> list[list[float]]:
        todo = [k for k in dict.fromkeys(zip(prompts, responses, strict=True)) if k not in memo]
        if todo:
            memo.update(zip(todo, compute([k[0] for k in todo], [k[1] for k in todo]), strict=True))
        return [memo[k] for k in zip(prompts, responses, strict=True)]

    labeler.logodds = logodds  # type: ignore[method-assign]
    labeler._memoized = True  # type: ignore[attr-defined]


def judge_is_reward_source(spec: Any) -> bool:
    """Whether the judge is the labeler whose judgement RL optimised (directly, or through a reward
    model trained on its labels): then (b) restates (a) rather than checking it."""
    judge = spec.judge()
    if judge is None or spec.labeler is None:
        return False
    if spec.rl.reward == "rewardModel" and (spec.reward_model.path or spec.dataset.labels):
        return False  # the reward model was not trained on this job's labeler
    return judge.model_dump() == spec.labeler.model_dump()


def _reward_source(
    config: Any, pol: _Policies, shared_labeler: Any
) -> tuple[str, Callable | None, str | None]:
    """``(description, reward_fn or None, why not)`` for the reward RL optimised."""
    spec = config.spec
    if spec.rl.reward == "direct":
        if spec.labeler is None:
            return "direct", None, "rl.reward is direct but the job has no labeler"
        from rlaif_trainer.stages.label import labeler_name

        if shared_labeler is not None:

            def direct(pr: list[str], rs: list[str]) -> list[float]:
                with pol.base_weights():
                    return [float(x) for x in shared_labeler.score(pr, rs)]

            return f"direct ({labeler_name(spec.labeler)}, {spec.labeler.mode})", direct, None
        from rlaif_trainer.feedback.build import build_labeler

        lab = build_labeler(spec.labeler)
        _memoize_logodds(lab)
        return (
            f"direct ({labeler_name(spec.labeler)}, {spec.labeler.mode})",
            lambda pr, rs: [float(x) for x in lab.score(pr, rs)],
            None,
        )
    path = Path(spec.reward_model.path or config.artifacts.reward_model)
    if not (path / "config.json").is_file():
        return "rewardModel", None, f"no reward model at {path}"
    from rlaif_trainer.reward_model.scorer import load_reward_scorer

    return f"rewardModel ({path})", load_reward_scorer(path), None


def evaluate(
    config,
    *,
    progress: bool = True,
    judge_fn: Callable[[list[str], list[str], list[str]], list[Any]] | None = None,
    reward_fn: Callable[[list[str], list[str]], list[float]] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """Generate, score, judge and compute the report. Returns ``(report, samples, rl_metrics)``.

    ``judge_fn(prompts, trained, initial) -> [PreferenceResult]`` (A = trained) and ``reward_fn``
    override the configured judge and reward source (tests).
    """
    from rlaif_trainer.feedback import evalstats as st

    spec = config.spec
    recs = _held_out_records(spec)[: spec.evaluation.samples]
    prompts = [r["prompt"] for r in recs]
    k = spec.evaluation.samples_per_prompt
    policy_path = Path(spec.evaluation.policy or config.artifacts.policy)
    if not policy_path.exists():
        raise BadInputError(f"no trained policy at {policy_path}: run the rl stage or set evaluation.policy")
    references = (
        read_references(spec.dataset.eval_references, [r["id"] for r in recs])
        if spec.dataset.eval_references
        else None
    )
    device = stage_device()
    pol = _Policies(spec, policy_path, device)
    tok = pol.tokenizer

    # Sample j of every prompt, from both policies, with seed j: rows are prompt-major (i * k + j).
    t0 = time.perf_counter()
    trained: list[str] = [""] * (len(prompts) * k)
    initial: list[str] = list(trained)
    len_t: list[int] = [0] * len(trained)
    len_i: list[int] = [0] * len(trained)

    def sample(model: Any, seed: int, desc: str) -> tuple[list[str], list[int]]:
        return _sample(model, tok, prompts, seed=seed, spec=spec, batch_size=16, progress=progress, desc=desc)

    for j in range(k):
        seed = config.seed + 10_007 + 7_919 * j
        texts, lens = sample(pol.model, seed, f"eval: trained {j + 1}/{k}")
        with pol.initial_policy() as m:
            texts_i, lens_i = sample(m, seed, f"eval: initial {j + 1}/{k}")
        for i in range(len(prompts)):
            trained[i * k + j], len_t[i * k + j] = texts[i], lens[i]
            initial[i * k + j], len_i[i * k + j] = texts_i[i], lens_i[i]
    # The A/A null: the initial policy against itself. Disjoint pairs of its own samples (0 v 1,
    # 2 v 3, ...), so no sample is judged twice and the pairs of one prompt are not forced to
    # balance (a cycle 0 v 1 v 2 v 3 v 0 under a pointwise judge wins about half by construction).
    rows_prompts = [p for p in prompts for _ in range(k)]
    if k > 1:
        aa_rows = [(i * k + 2 * m, i * k + 2 * m + 1) for i in range(len(prompts)) for m in range(k // 2)]
        aa_first, aa_second = [initial[a] for a, _ in aa_rows], [initial[b] for _, b in aa_rows]
        k_aa = k // 2
    else:
        with pol.initial_policy() as m:
            aa_second, _ = sample(m, config.seed + 20_011, "eval: initial (A/A)")
        aa_rows = [(i, i) for i in range(len(prompts))]
        aa_first, k_aa = list(initial), 1
    aa_prompts = [rows_prompts[a] for a, _ in aa_rows]
    t_gen = time.perf_counter() - t0

    judge_spec = spec.judge()
    shared_labeler = None
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
            _memoize_logodds(labeler)
            if spec.labeler is not None and judge_spec.model_dump() == spec.labeler.model_dump():
                shared_labeler = labeler

            def judge_fn(pr, a, b):
                with pol.base_weights():
                    return labeler.preference(pr, a, b)
        else:
            labeler = build_labeler(judge_spec, api_key_env=JUDGE_API_KEY_ENV, device=device)
            _memoize_logodds(labeler)

            def judge_fn(pr, a, b):
                return labeler.preference(pr, a, b)

    t1 = time.perf_counter()
    results: list[Any] = []
    aa: list[Any] = []
    bs = 16
    total = len(rows_prompts) + len(aa_prompts)
    for target, pr, first, second in (
        (results, rows_prompts, trained, initial),
        (aa, aa_prompts, aa_first, aa_second),
    ):
        for i in range(0, len(pr), bs):
            t_batch = time.perf_counter()
            batch = judge_fn(pr[i : i + bs], first[i : i + bs], second[i : i + bs])
            target.extend(batch)
            prom.record_step(
                samples=len(batch),
                seconds=time.perf_counter() - t_batch,
                progress=(len(results) + len(aa)) / total,
            )
    t_judge = time.perf_counter() - t1

    # (a) the optimised reward
    t2 = time.perf_counter()
    if reward_fn is not None:
        source, why_not = "given", None
    else:
        source, reward_fn, why_not = _reward_source(config, pol, shared_labeler)
    reward: dict[str, Any] = {"source": source}
    r_t = r_i = None
    if reward_fn is not None:
        r_t = reward_fn(rows_prompts, trained)
        r_i = reward_fn(rows_prompts, initial)
        reward.update(st.paired_gain(r_t, r_i, k, seed=config.seed))
    else:
        reward["unavailable"] = why_not
    t_reward = time.perf_counter() - t2

    # (c) the never-optimised signal
    rouge: dict[str, Any] | None = None
    g_t = g_i = None
    if references is not None:
        refs_rows = [r for r in references for _ in range(k)]
        g_t, g_i = rouge_l(refs_rows, trained), rouge_l(refs_rows, initial)
        rouge = {
            "metric": "ROUGE-L F-measure against dataset.evalReferences (rouge-score, Porter stemmer)",
            **st.paired_gain(g_t, g_i, k, seed=config.seed),
        }

    # (b) the judge, its A/A null, and length control
    p = [float(r.p_a) for r in results]
    p_aa = [float(r.p_a) for r in aa]
    win = st.cluster_win_rate(p, k, seed=config.seed)
    null = st.cluster_win_rate(p_aa, k_aa, seed=config.seed)
    p_aa_row = {a: x for (a, _), x in zip(aa_rows, p_aa, strict=True)} if k > 1 else {}
    diff = [a - b for a, b in zip(len_t, len_i, strict=True)]
    lc = st.length_controlled_win_rate(p, diff, groups=k, seed=config.seed)
    circular = judge_is_reward_source(spec) if judge_spec is not None else False
    mode = getattr(judge_spec, "mode", None)
    samples = [
        {
            "prompt": rows_prompts[r],
            "sample": r % k,
            "trained": trained[r],
            "initial": initial[r],
            "p_trained": p[r],
            **({"p_aa_vs_next": p_aa_row[r]} if r in p_aa_row else {}),
            "len_trained": len_t[r],
            "len_initial": len_i[r],
            **(
                {"reward_trained": r_t[r], "reward_initial": r_i[r]}
                if r_t is not None and r_i is not None
                else {}
            ),
            **(
                {"rouge_l_trained": g_t[r], "rouge_l_initial": g_i[r]}
                if g_t is not None and g_i is not None
                else {}
            ),
        }
        for r in range(len(rows_prompts))
    ]
    rl_metrics = _read_metrics(policy_path)
    report = {
        "stage": "evaluate",
        "policy": str(policy_path),
        "initial_policy": spec.policy.model,
        "judge": None
        if judge_spec is None
        else {"provider": judge_spec.provider, "model": judge_spec.model, "mode": mode},
        "judge_is_reward_source": circular,
        "judge_note": (
            "the judge is the reward source (the same labeler and principles RL optimised): its win rate "
            "restates the optimised reward and is not independent evidence of a better policy"
            if circular
            else "the judge is not the reward source"
        ),
        "prompts": len(prompts),
        "samples_per_prompt": k,
        "reward": reward,
        "rouge_l": rouge,
        **{
            key: win[key]
            for key in (
                "win_rate",
                "win_rate_ci95",
                "soft_win_rate",
                "soft_win_rate_ci95",
                "wins",
                "losses",
                "ties",
            )
        },
        "soft_win_rate_vs_half": win["soft_vs_half"],
        "aa_null": {
            "pairs": len(p_aa),
            "design": "disjoint pairs of the initial policy's own samples (0 v 1, 2 v 3, ...)"
            if k > 1
            else "the initial policy's sample against one more sample with another seed",
            **{
                key: null[key]
                for key in ("win_rate", "win_rate_ci95", "soft_win_rate", "soft_win_rate_ci95", "ties")
            },
        },
        # Pointwise judges score each response alone: no position bias to measure (it is 0 by construction).
        "consistency_rate": None if mode == "pointwise" else _consistency(results),
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
        "reward_s": round(t_reward, 3),
        "rl_steps": len(rl_metrics),
        "rl_algorithm": _policy_meta(policy_path).get("algorithm"),
    }
    return report, samples, rl_metrics


def _consistency(results: Sequence[Any]) -> float | None:
    known = [r.consistent for r in results if getattr(r, "consistent", None) is not None]
    return sum(known) / len(known) if known else None


def _r(x: Any, nd: int = 4) -> Any:
    return round(x, nd) if isinstance(x, float) else x


def summary_of(report: dict[str, Any], wall_s: float) -> EvaluateSummary:
    """The stage summary of an :func:`evaluate` report: its headline figures, rounded."""
    lc = report["length_controlled"]
    rw, rg, aa = report["reward"], report["rouge_l"] or {}, report["aa_null"]
    return EvaluateSummary(
        stage="evaluate",
        prompts=report["prompts"],
        samples_per_prompt=report["samples_per_prompt"],
        reward_initial=_r(rw.get("initial")),
        reward_trained=_r(rw.get("trained")),
        reward_gain=_r(rw.get("mean_diff")),
        reward_gain_ci_low=_r(rw["ci95"][0]) if "ci95" in rw else None,
        reward_gain_ci_high=_r(rw["ci95"][1]) if "ci95" in rw else None,
        reward_gain_p_value=_r(rw.get("p_value")),
        rouge_l_initial=_r(rg.get("initial")),
        rouge_l_trained=_r(rg.get("trained")),
        rouge_l_gain=_r(rg.get("mean_diff")),
        rouge_l_gain_ci_low=_r(rg["ci95"][0]) if "ci95" in rg else None,
        rouge_l_gain_ci_high=_r(rg["ci95"][1]) if "ci95" in rg else None,
        rouge_l_gain_p_value=_r(rg.get("p_value")),
        win_rate_vs_initial=round(report["win_rate"], 4),
        win_rate_ci_low=round(report["win_rate_ci95"][0], 4),
        win_rate_ci_high=round(report["win_rate_ci95"][1], 4),
        soft_win_rate=round(report["soft_win_rate"], 4),
        win_rate_equal_length=round(lc["win_rate_at_equal_length"], 4),
        aa_win_rate=round(aa["win_rate"], 4),
        aa_win_rate_ci_low=round(aa["win_rate_ci95"][0], 4),
        aa_win_rate_ci_high=round(aa["win_rate_ci95"][1], 4),
        judge_is_reward_source=report["judge_is_reward_source"],
        ties=report["ties"],
        judge_consistency=report.get("consistency_rate"),
        mean_length_trained=round(report["mean_length_trained"], 2),
        mean_length_initial=round(report["mean_length_initial"], 2),
        wall_s=round(wall_s, 3),
    )


def run(config, *, progress: bool = True) -> EvaluateSummary:
    """The ``evaluate`` stage: write ``<eval>/`` atomically with a DONE marker; return the summary."""
    from rlaif_trainer.data.artifacts import finalize_dir, partial_dir

    out = Path(config.artifacts.eval)
    if (done := resumed_summary(out, EvaluateSummary)) is not None:
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
    (work / "summary.json").write_text(json.dumps(summary.to_message(), indent=2))
    finalize_dir(work, out, summary)
    log.info(
        "evaluate: reward gain %s (p %s), ROUGE-L gain %s (p %s), win rate %.3f [%.3f, %.3f], A/A %.3f",
        summary.reward_gain,
        summary.reward_gain_p_value,
        summary.rouge_l_gain,
        summary.rouge_l_gain_p_value,
        report["win_rate"],
        *report["win_rate_ci95"],
        summary.aa_win_rate,
    )
    return summary
