"""Sharded labeling throughput: the label stage as 1 process against 2 shard processes, same run.

Each configuration runs the real stage: ``rlaif-train label --config <label.json>`` processes, one
per shard, started together with ``$JOB_COMPLETION_INDEX`` set as the Indexed Job's pods get it,
on the same model and pairs (the ``hf`` labeler, pairwise, both orders). The 1-shard baseline runs
in the same invocation, alternating with the 2-shard run, ``--repeats`` times, so both see the same
machine. The CPU threads are split fairly: the 1-shard process gets ``--threads``, each of the two
shard processes half of them (total cores are the same; the gain is what sharding itself buys:
two independent batches in flight, model load and tokenization overlapped).

Reports per run: wall seconds (processes started until the last exited: model load, labeling, the
merge), wall pairs/s, labeling pairs/s (pairs over the slowest shard's labeling time, from the
shards' saved summaries), and the load average before and after. Checks that the merged labels hold
every pair once, in input order, and that 1 and 2 shards give the same soft labels.

    python benchmarks/bench_label_shards.py --pairs 16 --threads 2 --repeats 2 --json /tmp/shards.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_labeling import make_pairs


def write_config(work: Path, model: str, pairs: int, shards: int, batch_size: int) -> Path:
    import rlaif_api as api

    prompts, a, b = make_pairs(pairs)
    work.mkdir(parents=True, exist_ok=True)
    with (work / "pairs.jsonl").open("w") as fh:
        for i, (p, ra, rb) in enumerate(zip(prompts, a, b, strict=True)):
            fh.write(
                json.dumps({"id": f"pair-{i:04d}", "prompt": p, "response_a": ra, "response_b": rb}) + "\n"
            )
    (work / "prompts.jsonl").write_text(json.dumps({"prompt": "unused"}) + "\n")
    job = api.RLAIFJob.model_validate(
        {
            "metadata": {"name": "bench", "namespace": "bench"},
            "spec": {
                "policy": {"model": model},
                "dataset": {"pairs": str(work / "pairs.jsonl"), "prompts": str(work / "prompts.jsonl")},
                "labeler": {"provider": "hf", "model": model, "mode": "pairwise", "batchSize": batch_size},
                "resources": {"label": {"shards": shards}},
                "stages": ["label"],
            },
        }
    )
    config = api.resolve_stage_configs(job, str(work / "ws"))["label"]
    path = work / "label.json"
    path.write_text(config.to_json())
    return path


def run_once(
    work: Path, model: str, pairs: int, shards: int, threads: int, batch_size: int
) -> dict[str, Any]:
    if work.exists():
        shutil.rmtree(work)
    config = write_config(work, model, pairs, shards, batch_size)
    per = max(threads // shards, 1)
    env = {**os.environ, "OMP_NUM_THREADS": str(per), "MKL_NUM_THREADS": str(per), "RLAIF_DEVICE": "cpu"}
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rlaif_trainer.cli",
                "label",
                "--config",
                str(config),
                "--termination-log",
                str(work / f"term-{i}"),
                "--no-progress",
            ],
            env={**env, "JOB_COMPLETION_INDEX": str(i)} if shards > 1 else env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for i in range(shards)
    ]
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"a label process failed ({p.returncode}):\n{err.decode()[-3000:]}")
    wall = time.perf_counter() - t0
    load_after = os.getloadavg()
    cfg = json.loads(config.read_text())
    labels = Path(cfg["artifacts"]["labels"])
    rows = [json.loads(x) for x in (labels / "labels.jsonl").read_text().splitlines()]
    expected = [f"pair-{i:04d}" for i in range(pairs)]
    if [r["id"] for r in rows] != expected:
        raise SystemExit("the merged labels do not hold every pair once, in input order")
    if shards > 1:
        shard_done = [
            json.loads((labels.with_name(labels.name + ".shards") / f"{i:03d}" / "DONE").read_text())
            for i in range(shards)
        ]
        label_seconds = max(s["labelled_now"] / s["pairs_per_s"] for s in shard_done if s.get("pairs_per_s"))
    else:
        done = json.loads((labels / "DONE").read_text())
        label_seconds = done["labelled_now"] / done["pairs_per_s"]
    return {
        "shards": shards,
        "threads_per_process": per,
        "wall_s": round(wall, 2),
        "wall_pairs_per_s": round(pairs / wall, 4),
        "label_s": round(label_seconds, 2),
        "label_pairs_per_s": round(pairs / label_seconds, 4),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in load_after],
        "p_a": {r["id"]: r["p_a"] for r in rows},
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--model",
        default="embedded:smollm2-135m-instruct",
        help="labeler model (default: the embedded default)",
    )
    ap.add_argument("--pairs", type=int, default=16, help="pairs to label, each in both orders (default 16)")
    ap.add_argument(
        "--threads", type=int, default=2, help="CPU threads in all, split over the shards (default 2)"
    )
    ap.add_argument("--batch-size", type=int, default=8, help="labeler batch size (default 8)")
    ap.add_argument("--repeats", type=int, default=2, help="rounds of (1 shard, 2 shards) (default 2)")
    ap.add_argument("--workdir", help="scratch directory (default: a temporary one, removed afterwards)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-shards-"))
    runs = []
    try:
        for r in range(args.repeats):
            for shards in (1, 2):
                res = run_once(
                    root / f"r{r}-s{shards}", args.model, args.pairs, shards, args.threads, args.batch_size
                )
                res["round"] = r + 1
                runs.append(res)
                print(
                    f"round {r + 1} shards {shards}: wall {res['wall_s']:.1f}s ({res['wall_pairs_per_s']:.3f} pairs/s), "
                    f"labeling {res['label_s']:.1f}s ({res['label_pairs_per_s']:.3f} pairs/s), "
                    f"load {res['load_before'][0]:.1f} -> {res['load_after'][0]:.1f}",
                    flush=True,
                )
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    ones = [r for r in runs if r["shards"] == 1]
    twos = [r for r in runs if r["shards"] == 2]
    diff = max(abs(a["p_a"][k] - b["p_a"][k]) for a in ones for b in twos for k in a["p_a"])
    summary = {
        "model": args.model,
        "pairs": args.pairs,
        "threads": args.threads,
        "cpus": os.cpu_count(),
        "machine": platform.platform(),
        "max_abs_p_a_difference_1_vs_2_shards": diff,
        "runs": [{k: v for k, v in r.items() if k != "p_a"} for r in runs],
    }
    for name, key in (("wall", "wall_pairs_per_s"), ("labeling", "label_pairs_per_s")):
        one = sum(r[key] for r in ones) / len(ones)
        two = sum(r[key] for r in twos) / len(twos)
        summary[f"{name}_speedup"] = round(two / one, 3)
        print(f"{name}: 1 shard {one:.3f} pairs/s, 2 shards {two:.3f} pairs/s, speed-up {two / one:.2f}x")
    print(f"max |p_a(1 shard) - p_a(2 shards)| = {diff:.2e}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
