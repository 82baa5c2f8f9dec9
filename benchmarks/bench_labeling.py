"""Labeling throughput: the ``hf`` labeler against a naive baseline, in the same run.

Both label the same pairs, in both orders, with the same prompts (paper-style: preamble, one
few-shot exemplar, the pair, "Preferred Response="), on the same model and threads:

* **naive**: one ``generate(max_new_tokens=1, output_scores=True)`` call per pair and order on the
  full prompt text: no batching, no prefix reuse (what a straightforward implementation does);
* **hf labeler**: :class:`rlaif_trainer.feedback.hf.HFPairwiseLabeler`: length-sorted batches,
  the shared head's KV cache computed once, the LM head run on the last position only.

Reports pairs/s of each, the speed-up, and the largest difference between the two methods' soft
labels (they compute the same quantity, so it must be ~0). Default model: the embedded default
(SmolLM2-135M-Instruct) on the CPU.

    python benchmarks/bench_labeling.py --pairs 24 --threads 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time


def make_pairs(n: int) -> tuple[list[str], list[str], list[str]]:
    topics = [
        "the water cycle",
        "photosynthesis",
        "the French revolution",
        "how vaccines work",
        "black holes",
        "the stock market",
        "machine learning",
        "the Roman empire",
        "climate change",
        "the human heart",
        "volcanoes",
        "the internet",
    ]
    prompts, a, b = [], [], []
    for i in range(n):
        t = topics[i % len(topics)]
        prompts.append(f"Explain {t} to a twelve-year-old in two or three sentences. (request {i})")
        a.append(
            f"{t.capitalize()} is a big topic. In short, it is about how things change and interact over time, "
            "and scientists study it to understand the world better."
        )
        b.append(
            f"Here is a simple explanation of {t}: imagine a set of connected parts that keep moving; "
            "each step causes the next one, and together they make the whole process work."
            + " More."
            * (i % 4)
        )
    return prompts, a, b


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--model",
        default="embedded:smollm2-135m-instruct",
        help="model name or path (default: the embedded default)",
    )
    ap.add_argument("--pairs", type=int, default=24, help="pairs to label (each in both orders)")
    ap.add_argument("--batch-size", type=int, default=16, help="hf labeler batch size")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--preamble", default="detailed", help="base, detailed or custom text")
    ap.add_argument("--no-few-shot", action="store_true", help="leave out the few-shot exemplar")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    import torch

    from rlaif_api import FewShotExample
    from rlaif_trainer.feedback.hf import HFPairwiseLabeler
    from rlaif_trainer.feedback.prefix import single_token_id
    from rlaif_trainer.modeling.loading import load_causal_lm

    torch.set_num_threads(args.threads)
    model, tok = load_causal_lm(args.model, device=args.device)
    model.eval()
    few = (
        []
        if args.no_few_shot
        else [
            FewShotExample(
                prompt="What is the capital of Italy?",
                response_a="Rome is the capital of Italy.",
                response_b="Italy is a country in Europe with many cities.",
                preferred=1,
            )
        ]
    )
    prompts, a, b = make_pairs(args.pairs)
    lab = HFPairwiseLabeler(model, tok, preamble=args.preamble, few_shot=few, batch_size=args.batch_size)
    ids = [single_token_id(tok, "1"), single_token_id(tok, "2")]

    # naive baseline: one generate call per pair and order
    def naive_first_preferred(p: str, first: str, second: str) -> float:
        text = lab.parts(p, first, second).text
        enc = tok(text, return_tensors="pt", add_special_tokens=False).to(model.device)
        with torch.no_grad():
            out = model.generate(
                **enc,
                max_new_tokens=1,
                do_sample=False,
                output_scores=True,
                return_dict_in_generate=True,
                pad_token_id=tok.pad_token_id,
            )
        lp = torch.log_softmax(out.scores[0][0].float(), -1)
        l1, l2 = float(lp[ids[0]]), float(lp[ids[1]])
        return 1 / (1 + math.exp(l2 - l1))

    head_tokens = len(lab.scorer.head_ids(lab.fmt.parts(lab.head, "", "").head))
    suffix_tokens = [
        len(tok.encode(lab.parts(p, x, y).body + lab.parts(p, x, y).tail, add_special_tokens=False))
        for p, x, y in zip(prompts, a, b, strict=True)
    ]

    # warm-up both paths (first-call allocations, thread pools)
    naive_first_preferred(prompts[0], a[0], b[0])
    lab.preference(prompts[:2], a[:2], b[:2])
    lab.scorer.clear_cache()

    # Interleaved rounds (naive chunk, then the same chunk with the hf labeler), so that both see
    # the same machine load: the benchmark machine is shared.
    naive: list[float] = []
    res = []
    t_naive = t_hf = 0.0
    chunk = max(1, args.batch_size // 2)  # one hf batch holds both orders of `chunk` pairs
    for s in range(0, args.pairs, chunk):
        sl = slice(s, s + chunk)
        t0 = time.perf_counter()
        for p, x, y in zip(prompts[sl], a[sl], b[sl], strict=True):
            ab = naive_first_preferred(p, x, y)
            ba = 1 - naive_first_preferred(p, y, x)
            naive.append(0.5 * (ab + ba))
        t1 = time.perf_counter()
        lab.scorer.clear_cache()  # each round pays for its own prefix pass
        res.extend(lab.preference(prompts[sl], a[sl], b[sl]))
        t2 = time.perf_counter()
        t_naive += t1 - t0
        t_hf += t2 - t1

    diff = max(abs(r.p_a - n) for r, n in zip(res, naive, strict=True))
    out = {
        "model": args.model,
        "device": args.device,
        "threads": args.threads,
        "pairs": args.pairs,
        "batch_size": args.batch_size,
        "preamble": args.preamble,
        "few_shot": len(few),
        "head_tokens": head_tokens,
        "mean_suffix_tokens": round(sum(suffix_tokens) / len(suffix_tokens), 1),
        "naive_pairs_per_s": round(args.pairs / t_naive, 3),
        "hf_pairs_per_s": round(args.pairs / t_hf, 3),
        "speedup": round(t_naive / t_hf, 2),
        "max_abs_diff_p_a": float(f"{diff:.2e}"),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "machine": f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads, torch {torch.__version__}",
    }
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
