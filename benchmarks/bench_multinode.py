"""Multi-node scaling on CPU: step time of the reward and rl stages on 1 node against 2 nodes.

Each "node" is one launcher agent on loopback with one process (one CPU thread, ``OMP_NUM_THREADS=1``),
started with the stage pod's own command line (``rlaif_api.contract.launch_command``, the operator's
builder uses it too), running the real stage from its config, with gloo between the nodes. The 1-node
baseline is the command a one-node pod runs (``rlaif-train <stage>``), with the same global batch,
seed and steps, measured in the same round, right before the 2-node run, so that a change of the
machine's load between rounds shows as spread rather than as scaling.

Reported per stage and round: the mean step time over the steps after the first (``step_time_s`` of
the stage's ``metrics.jsonl``: rank 0's, which includes waiting for the other node), the speedup
``t1 / t2`` and the strong-scaling efficiency ``t1 / (2 * t2)`` (1.0: two nodes halve the step), and
the launch's wall time (process start, imports and rendezvous included). The model is a small random
Llama built locally (``--hidden-size``, ``--layers``); with a few thousand parameters per layer the
step is mostly fixed costs (Python, the all-reduce's latency), which is what a small model shows.

    python benchmarks/bench_multinode.py                       # 2 rounds, both stages
    python benchmarks/bench_multinode.py --rounds 3 --stages rl --out /tmp/multinode.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests' launch helper


def _uptime() -> str:
    """The 1/5/15-minute load averages (what ``uptime`` prints): the machine is shared."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def _model(args: argparse.Namespace, workdir: Path) -> Path:
    from rlaif_trainer.testing import build_tiny_model

    return build_tiny_model(
        workdir / f"model-{args.hidden_size}x{args.layers}",
        hidden_size=args.hidden_size,
        num_layers=args.layers,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=4 * args.hidden_size,
    )


def _config(
    stage: str, args: argparse.Namespace, model: Path, workdir: Path, name: str
) -> tuple[Path, Path, Path]:
    """The stage's config in workspace ``name``: (config file, artifact dir, termination log)."""
    import rlaif_api as api

    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    prompts = data / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": f"Question {i}: explain topic {i * 7}."}) + "\n" for i in range(64))
    )
    labels = data / "labels.jsonl"
    labels.write_text(
        "".join(
            json.dumps(
                {
                    "id": f"p{i}",
                    "prompt": f"question {i} about {'x' * (i % 6)}",
                    "response_a": ("good answer " * (1 + i % 3)) if i % 2 else "bad " * (1 + i % 5),
                    "response_b": "bad " * (1 + i % 5) if i % 2 else ("good answer " * (1 + i % 3)),
                    "p_a": 0.8 if i % 2 else 0.2,
                }
            )
            + "\n"
            for i in range(args.reward_pairs)
        )
    )
    spec: dict[str, Any] = {
        "policy": {"model": str(model), "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
        "dataset": {"prompts": str(prompts), "labels": str(labels)},
        "labeler": {"provider": "python", "callable": "rlaif_trainer.feedback.rules:prefer_shorter"},
        "rewardModel": {
            "epochs": 1,
            "batchSize": args.reward_batch,
            "maxLength": 64,
            "evalFraction": 0.1,
            "checkpointEvery": 10_000,
            "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
            "minHeldOutAccuracy": 0,
        },
        "rl": {
            "algorithm": "rloo",
            "reward": "direct",
            "steps": args.rl_steps,
            "batchSize": args.rl_batch,
            "samplesPerPrompt": 2,
            "maxNewTokens": args.max_new_tokens,
            "checkpointEvery": 10_000,
        },
        "stages": [stage],
        "seed": 0,
    }
    job = api.RLAIFJob.model_validate({"metadata": {"name": "bench"}, "spec": spec})
    cfg = api.resolve_stage_configs(job, workdir / name)[stage]
    path = workdir / name / f"{stage}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(cfg.to_json())
    artifact = Path(cfg.artifacts.reward_model if stage == "reward" else cfg.artifacts.policy)
    return path, artifact, workdir / name / "termination.json"


def _step_times(artifact: Path) -> list[float]:
    rows = [json.loads(x) for x in (artifact / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [float(r["step_time_s"]) for r in rows]


def _run(
    stage: str, nodes: int, args: argparse.Namespace, model: Path, workdir: Path, name: str
) -> dict[str, Any]:
    from tests.unit.trainer.multinode import run_nodes, run_single, stage_args, stage_env

    cfg, artifact, term = _config(stage, args, model, workdir, name)
    argv = stage_args(stage, cfg, term)
    env = stage_env()
    t0 = time.perf_counter()
    if nodes == 1:
        runs = [run_single(argv, env)]
    else:
        runs = run_nodes(argv, env, workdir / name / "logs", nodes=nodes)
    wall = time.perf_counter() - t0
    for r in runs:
        if r.returncode != 0:
            raise RuntimeError(
                f"{stage} on {nodes} node(s), node {r.rank} exited {r.returncode}:\n{r.output[-3000:]}"
            )
    steps = _step_times(artifact)
    measured = steps[1:] if len(steps) > 1 else steps  # the first step pays for warm-up
    summary = json.loads(term.read_text())
    return {
        "nodes": nodes,
        "processes": summary.get("processes"),
        "steps": len(steps),
        "step_s": statistics.mean(measured),
        "step_s_min": min(measured),
        "wall_s": wall,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument(
        "--rounds", type=int, default=2, help="rounds of (1 node, then 2 nodes) per stage (default 2)"
    )
    p.add_argument("--stages", nargs="+", choices=["reward", "rl"], default=["reward", "rl"])
    p.add_argument("--hidden-size", type=int, default=256, help="the model's hidden size (default 256)")
    p.add_argument("--layers", type=int, default=4, help="the model's decoder layers (default 4)")
    p.add_argument(
        "--reward-pairs", type=int, default=400, help="labelled pairs (default 400: 350 trained, 50 held out)"
    )
    p.add_argument("--reward-batch", type=int, default=16, help="reward global batch in pairs (default 16)")
    p.add_argument("--rl-steps", type=int, default=8, help="rl steps (default 8)")
    p.add_argument(
        "--rl-batch", type=int, default=8, help="rl global batch in prompts (default 8; x2 samples)"
    )
    p.add_argument("--max-new-tokens", type=int, default=32, help="rl response length limit (default 32)")
    p.add_argument("--workdir", type=Path, default=None, help="keep the runs here (default: a temporary dir)")
    p.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="bench-multinode-") as tmp:
        workdir = args.workdir or Path(tmp)
        model = _model(args, workdir)
        results: dict[str, Any] = {
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": sys.version.split()[0],
            },
            "args": {k: str(v) for k, v in vars(args).items()},
            "rounds": [],
        }
        for r in range(args.rounds):
            for stage in args.stages:
                load_before = _uptime()
                one = _run(stage, 1, args, model, workdir, f"r{r}-{stage}-1")
                two = _run(stage, 2, args, model, workdir, f"r{r}-{stage}-2")
                row = {
                    "round": r + 1,
                    "stage": stage,
                    "one": one,
                    "two": two,
                    "speedup": one["step_s"] / two["step_s"],
                    "efficiency": one["step_s"] / (2 * two["step_s"]),
                    "load_before": load_before,
                    "load_after": _uptime(),
                }
                results["rounds"].append(row)
                print(
                    f"round {r + 1} {stage:6s}: 1 node {one['step_s'] * 1e3:7.1f} ms/step, "
                    f"2 nodes {two['step_s'] * 1e3:7.1f} ms/step, speedup {row['speedup']:.2f}, "
                    f"efficiency {row['efficiency']:.2f} (wall {one['wall_s']:.1f} / {two['wall_s']:.1f} s; "
                    f"load {load_before} -> {row['load_after']})",
                    flush=True,
                )
        if args.out:
            args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
