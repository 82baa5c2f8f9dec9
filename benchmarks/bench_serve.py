"""Labeling throughput through a served endpoint against the in-process ``hf`` labeler, same run.

Both label the same pairs (bench_labeling's), in both orders, with the same prompt text (no chat
template, as the completions API sends plain text), the same model and the same batch size:

* **in-process**: :class:`rlaif_trainer.feedback.hf.HFPairwiseLabeler` (length-sorted batches,
  the shared head's KV cache reused);
* **served**: :class:`rlaif_trainer.feedback.openai.OpenAIPairwiseLabeler` with ``batch-size``
  requests in flight, against ``rlaif-train serve`` in its own process (``--max-batch`` =
  batch size; it batches concurrent requests but has no prefix cache), over loopback HTTP.

The rounds are interleaved (an in-process chunk, then the same chunk served), so both see the same
machine load. Reports pairs/s of each, their ratio, and the largest soft-label difference.

    python benchmarks/bench_serve.py --pairs 24 --threads 2 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from bench_labeling import make_pairs  # the same pairs as the in-process labeling benchmark


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_server(model: str, port: int, threads: int, batch: int, device: str) -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).with_name("rlaif-train")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "RLAIF_DEVICE": device}
    cmd = [str(exe), "serve", model, "--host", "127.0.0.1", "--port", str(port), "--max-batch", str(batch)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"rlaif-train serve exited {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("rlaif-train serve did not become ready in 300 s")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--model", default="embedded:smollm2-135m-instruct", help="model (default: the embedded one)"
    )
    ap.add_argument("--pairs", type=int, default=24, help="pairs to label (each in both orders)")
    ap.add_argument("--batch-size", type=int, default=16, help="batch size of both paths")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads of each path")
    ap.add_argument("--repeats", type=int, default=2, help="measured repetitions of the whole comparison")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    import torch

    from rlaif_trainer.feedback.hf import HFPairwiseLabeler
    from rlaif_trainer.feedback.openai import OpenAIPairwiseLabeler
    from rlaif_trainer.modeling.loading import load_causal_lm

    torch.set_num_threads(args.threads)
    model, tok = load_causal_lm(args.model, device=args.device)
    model.eval()
    prompts, a, b = make_pairs(args.pairs)
    local = HFPairwiseLabeler(model, tok, batch_size=args.batch_size, use_chat_template=False)
    port = _free_port()
    server = _start_server(args.model, port, args.threads, args.batch_size, args.device)
    try:
        remote = OpenAIPairwiseLabeler(
            endpoint=f"http://127.0.0.1:{port}/v1", model=args.model, max_concurrency=args.batch_size
        )
        local.preference(prompts[:2], a[:2], b[:2])  # warm-up both paths
        remote.preference(prompts[:2], a[:2], b[:2])
        rounds = []
        chunk = max(1, args.batch_size // 2)  # one batch holds both orders of `chunk` pairs
        for _ in range(args.repeats):
            t_local = t_served = 0.0
            diff = 0.0
            for s in range(0, args.pairs, chunk):
                sl = slice(s, s + chunk)
                local.scorer.clear_cache()  # each round pays for its own prefix pass
                t0 = time.perf_counter()
                mine = local.preference(prompts[sl], a[sl], b[sl])
                t1 = time.perf_counter()
                theirs = remote.preference(prompts[sl], a[sl], b[sl])
                t2 = time.perf_counter()
                t_local += t1 - t0
                t_served += t2 - t1
                diff = max(diff, *(abs(x.p_a - y.p_a) for x, y in zip(mine, theirs, strict=True)))
            rounds.append(
                {
                    "in_process_pairs_per_s": round(args.pairs / t_local, 3),
                    "served_pairs_per_s": round(args.pairs / t_served, 3),
                    "served_over_in_process": round(t_local / t_served, 3),
                    "max_abs_diff_p_a": float(f"{diff:.2e}"),
                }
            )
    finally:
        server.terminate()
        server.wait(timeout=30)
    out = {
        "model": args.model,
        "device": args.device,
        "threads": args.threads,
        "pairs": args.pairs,
        "batch_size": args.batch_size,
        "rounds": rounds,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}",
    }
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
