"""Which cheap reward, if RL optimised it, would raise ROUGE-L? A best-of-n probe on dev posts.

Issue 13's quickstart optimised its four pointwise principles and ROUGE-L did not move. This probe
asks why before spending RL runs: on the 50 calibration posts (training posts, never the held-out
evaluation posts), it samples ``--samples`` responses per post from the initial policy with the RL
sampler's settings (temperature 0.9, 32 new tokens), scores each with the embedded labeler's yes/no
principles and with the response's information about the post, and measures, for each candidate
reward against ROUGE-L to the human's better summary of that post:

* the within-post correlation (every value centred on its post's mean): what RL's per-prompt
  baseline (RLOO) sees;
* the best-of-4 gain: ROUGE-L of the reward's pick among 4 samples minus the 4 samples' mean, over
  200 random groups per post (best-of-n is what a KL-regularised policy moves towards), with its
  standard error over posts; and the same after the reward is length-residualised within the post.

The information is ``log P(post | "Summary: <response>\\n\\nFull post: ") − log P(post | "Summary: \\n\\n
Full post: ")``, tokenised in two pieces. It is the probe's own template; the shipped term
(``rlaif_trainer.feedback.information``) reads the whole prompt in a generic template. On 25 of these
posts the two correlate 0.79 within a post, and with ROUGE-L 0.70 (probe) and 0.59 (shipped).

    python benchmarks/probe_reward_terms.py --json /tmp/probe.json          # about 18 min on 2 idle cores
    python benchmarks/probe_reward_terms.py --analyse /tmp/probe.json       # the tables again, no model
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PAIRS = REPO / "examples" / "data" / "quickstart_calibration_pairs.jsonl"
PRINCIPLES = [
    "Is the response a short summary of the post?",
    "Is the response about the same topic as the post?",
    "Is every fact in the response stated in the post?",
    "Is the response a good one-sentence summary of the post?",
    "Is the response a complete sentence?",
    "Does the response use its own words rather than copying the post?",
    "Does the response mention the main point of the post?",
    "Does the response say what the poster is asking or wondering about?",
]
SHIPPED = [0, 1, 2, 3]  # the quickstart's four principles


def post_logprob(model, tok, summaries, posts, batch_size=16):
    """Sum of log P(post tokens | 'Summary: <s>\\n\\nFull post: ') under the frozen model."""
    import torch

    out = []
    for i in range(0, len(posts), batch_size):
        ids, spans = [], []
        for s, p in zip(summaries[i : i + batch_size], posts[i : i + batch_size], strict=True):
            a = tok.encode(f"Summary: {s}\n\nFull post: ", add_special_tokens=False)
            b = tok.encode(p, add_special_tokens=False)
            ids.append(a + b)
            spans.append((len(a), len(a) + len(b)))
        width = max(len(x) for x in ids)
        x = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in ids])
        m = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in ids])
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=x, attention_mask=m).logits.float(), -1)
        for j, (a, b) in enumerate(spans):
            out.append(float(lp[j, a - 1 : b - 1].gather(-1, x[j, a:b, None]).sum()))
    return out


def measure(samples: int, seed: int) -> dict:
    import torch
    from tqdm.auto import tqdm

    from rlaif_trainer.feedback.hf import HFPointwiseLabeler
    from rlaif_trainer.modeling.chat import format_prompts
    from rlaif_trainer.modeling.generation import generate
    from rlaif_trainer.modeling.loading import load_causal_lm
    from rlaif_trainer.stages.evaluate import rouge_l

    rows = [json.loads(line) for line in PAIRS.read_text().splitlines()]
    refs = [r["response_a"] if r["p_a"] > 0.5 else r["response_b"] for r in rows]
    model, tok = load_causal_lm("embedded:smollm2-135m-instruct")
    model.eval()
    rep = [r["prompt"] for r in rows for _ in range(samples)]
    texts, lens = [], []
    torch.manual_seed(seed)
    for i in tqdm(range(0, len(rep), 32), desc="sample"):
        g = generate(model, tok, format_prompts(tok, rep[i : i + 32]), max_new_tokens=32, temperature=0.9)
        texts += g.texts
        lens += [int(x) for x in g.lengths.tolist()]
    lab = HFPointwiseLabeler(model, tok, principles=PRINCIPLES, batch_size=16)
    logodds = []
    with torch.no_grad():
        for i in tqdm(range(0, len(rep), 40), desc="principles"):
            logodds += lab.logodds(rep[i : i + 40], texts[i : i + 40])
    posts = [p.split("POST: ", 1)[1] for p in rep]
    return {
        "N": samples,
        "principles": PRINCIPLES,
        "prompts": rep,
        "texts": texts,
        "lens": lens,
        "logodds": logodds,
        "rouge": rouge_l([r for r in refs for _ in range(samples)], texts),
        "recon": post_logprob(model, tok, texts, posts),
        "recon0": post_logprob(model, tok, [""] * len(posts), posts),
    }


def analyse(d: dict) -> None:
    from transformers import AutoTokenizer

    from rlaif_trainer.modeling.embedded import resolve_model_path

    n = d["N"]
    p = len(d["texts"]) // n
    rouge = np.array(d["rouge"]).reshape(p, n)
    length = np.array(d["lens"], float).reshape(p, n)
    scores = (2 / (1 + np.exp(-np.array(d["logodds"]))) - 1).reshape(p, n, -1)
    info = (np.array(d["recon"]) - np.array(d["recon0"])).reshape(p, n)
    tok = AutoTokenizer.from_pretrained(resolve_model_path("embedded:smollm2-135m-instruct"))
    n_post = np.array(
        [len(tok.encode(q.split("POST: ", 1)[1], add_special_tokens=False)) for q in d["prompts"]]
    ).reshape(p, n)
    rng = np.random.default_rng(0)
    groups = [rng.permutation(n)[:4] for _ in range(200)]

    def within(x, y):
        x, y = x - x.mean(1, keepdims=True), y - y.mean(1, keepdims=True)
        return float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum()))

    def best_of_4(r):
        per = []
        for i in range(p):
            picks = [
                rouge[i, g][np.argmax(r[i, g] + 1e-9 * rng.standard_normal(4))] - rouge[i, g].mean()
                for g in groups
            ]
            per.append(np.mean(picks))
        return float(np.mean(per)), float(np.std(per, ddof=1) / np.sqrt(p))

    def length_residual(r):
        out = r.copy()
        for i in range(p):
            x = length[i] - length[i].mean()
            if (x * x).sum() > 0:
                out[i] = r[i] - (x * (r[i] - r[i].mean())).sum() / (x * x).sum() * x
        return out

    def row(name, r):
        m, se = best_of_4(r)
        print(
            f"| {name} | {within(r, rouge):+.3f} | {within(r, length):+.3f} | {m:+.4f} ± {se:.4f} "
            f"| {best_of_4(length_residual(r))[0]:+.4f} |"
        )

    print(
        f"{p} posts x {n} samples; ROUGE-L mean {rouge.mean():.3f}; {(length >= 32).mean():.0%} hit 32 tokens"
    )
    print("| reward | r(ROUGE-L) within post | r(length) | best-of-4 ROUGE-L gain | length-residualised |")
    print("| --- | ---: | ---: | ---: | ---: |")
    row("length in tokens", length)
    for j, q in enumerate(d["principles"]):
        row(q, scores[:, :, j])
    row("the four shipped principles (mean)", scores[:, :, SHIPPED].mean(2))
    row("information about the post (nats)", info)
    x = info / n_post
    for w in (1, 2, 4):
        term = 2 / (1 + np.exp(-w * x)) - 1
        row(f"shipped four + information per post token x {w}", (scores[:, :, SHIPPED].sum(2) + term) / 5)
    best = sorted(
        (best_of_4(scores[:, :, list(s)].mean(2))[0], s)
        for k in range(1, scores.shape[2] + 1)
        for s in itertools.combinations(range(scores.shape[2]), k)
    )[-1]
    print(f"best principle subset of {2 ** scores.shape[2] - 1}: {best[1]} best-of-4 {best[0]:+.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=8, help="responses per post (default 8)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--json", help="write the raw samples and scores here")
    ap.add_argument(
        "--analyse", metavar="JSON", help="print the tables from an earlier --json file, no model"
    )
    args = ap.parse_args()
    if args.analyse:
        analyse(json.loads(Path(args.analyse).read_text()))
        return
    t0 = time.perf_counter()
    d = measure(args.samples, args.seed)
    d["wall_s"] = time.perf_counter() - t0
    if args.json:
        Path(args.json).write_text(json.dumps(d))
    analyse(d)


if __name__ == "__main__":
    main()
