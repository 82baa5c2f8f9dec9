"""benchmarks/bench_gpu.py: its FLOP count against a hand count and torch's own FLOP counter, and
the whole benchmark as a CPU smoke test (tiny models, every section, TRL included)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_gpu.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_gpu"] = module
    spec.loader.exec_module(module)
    return module


bench = _load()
TINY = bench.SIZES["tiny"]


def test_matmul_params_by_hand():
    # hidden 64, 4 heads of 16 (q: 64 wide), 2 KV heads (k, v: 32 wide), MLP 128, 2 layers
    per_layer = 64 * 64 + 64 * 32 + 64 * 32 + 64 * 64 + 3 * 64 * 128
    assert per_layer == 36864
    assert bench.matmul_params(TINY, head_out=1) == 2 * 36864 + 64
    assert bench.matmul_params(TINY, head_out=600) == 2 * 36864 + 64 * 600


def test_train_and_rl_flops_by_hand():
    # attention forward: QK^T and PV, 2 FLOPs per multiply-add, 2 layers x 64 wide, s = 5 and 7
    attention = 2 * 2 * 2 * 64 * (5 * 5 + 7 * 7)
    assert attention == 37888
    assert bench.attention_fwd_flops(TINY, [5, 7]) == attention
    # 6 N T with N = 73792 (score head included), T = 12 real tokens, plus 3x the attention forward
    assert bench.train_flops(TINY, [5, 7], head_out=1) == 6 * 73792 * 12 + 3 * 37888 == 5_426_688
    # RL update: body 73728 weights over all 12 tokens, LM head (64 x 600) over the 5 response
    # tokens, three passes each (reference, policy forward, input-gradient backward), 4x attention
    assert bench.rl_update_flops(TINY, [3, 4], [2, 3]) == 6 * 73728 * 12 + 6 * 38400 * 5 + 4 * 37888


def test_train_flops_match_torch_flop_counter(tmp_path):
    """torch counts every matmul of a real forward + backward of the tiny reward model (eager
    attention, so the attention matmuls are plain bmm): the formula must agree exactly."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    tok = bench.build_tokenizer(tmp_path / "tok", TINY["vocab_size"])
    model = bench.build_model("reward", "tiny", tok, "cpu", torch.float32, attn_implementation="eager")
    for length in (9, 23):
        ids = torch.randint(5, len(tok), (1, length))
        with FlopCounterMode(display=False) as counter:
            model(input_ids=ids).logits.sum().backward()
        assert counter.get_total_flops() == bench.train_flops(TINY, [length], head_out=1)
        model.zero_grad(set_to_none=True)


def test_tokenizer_has_the_labelers_single_tokens(tmp_path):
    tok = bench.build_tokenizer(tmp_path / "tok", 600)
    assert len(tok) == 600
    for word in ["1", "2", "Yes", "No"]:
        assert len(tok.encode(word, add_special_tokens=False)) == 1
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)


def test_presets_resolve_and_cli_overrides():
    args = bench.resolve_args(["--preset", "gpu", "--rl-steps", "3"])
    assert (args.rm_size, args.rl_size, args.rl_steps, args.rl_k) == ("1.5b", "0.5b", 3, 4)
    assert bench.resolve_args([]).rm_size == "tiny"


@pytest.mark.slow
def test_cpu_smoke_run_measures_every_section(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--preset", "smoke", "--device", "cpu", "--json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert "errors" not in res
    assert {r["method"] for r in res["rm"]} == {"ours", "trl"}
    for r in res["rm"]:
        assert r["pairs_per_s"] > 0 and r["tokens_per_s"] > 0
        assert r["padded_tokens_per_s"] >= r["tokens_per_s"]
        assert 0 < r["mfu_vs_measured_matmul"] < 1.5
    assert {r["method"] for r in res["rl"]} == {"ours-grpo", "ours-rloo", "trl-grpo"}
    for r in res["rl"]:
        assert 0 < r["generation_share"] < 1
        assert r["generation_tokens_per_s"] > 0 and r["training_tokens_per_s"] > 0
    assert {(r["mode"], r["prefix_cache"]) for r in res["label"]} == {
        ("pairwise", True),
        ("pairwise", False),
        ("pointwise", True),
        ("pointwise", False),
    }
    assert all("error" not in r and r["tokens_per_s"] > 0 for r in res["gen"])
    assert res["summary"]["rm_pairs_per_s_ours_over_trl"] > 0
    assert "rl_tokens_per_s_ours-grpo_over_trl" in res["summary"]
    assert "rm  ours" in proc.stdout  # the table
