"""Rollouts through a colocated vLLM engine (``rl.generation: vllm``), TRL's colocate pattern.

The engine lives in the trainer's process, on the trainer's GPU, beside the policy. Before each
rollout whose policy changed since the last one (every optimizer step), the policy's weights are
sent to it: the base model's parameters under the base checkpoint's names, with each LoRA adapter
folded in (``W + scale · B A``). The fold is computed out of place in float32 and cast to the
weight's dtype; the policy's own weights are never touched, unlike peft's
``merge_adapter``/``unmerge_adapter``, whose round trip through bf16 would move the frozen base
weights (which are also the KL reference) by a rounding error every step.

The engine samples the responses; the update then scores them with the HF policy as it does for
``rl.generation: hf`` (vLLM's own log-probabilities are not used, so its kernels' rounding only
shifts which tokens are drawn, not the loss's arithmetic).

vLLM is an optional dependency: :class:`VLLMEngine` imports it on construction and, when it is not
importable, raises a :class:`BadInputError` that names the field to change. The weight sync is
tested on the CPU with a fake engine (tests/unit/trainer/modeling/test_vllm_engine.py); no machine
this project was lent has vLLM, so the vLLM calls themselves are not exercised by any test here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Protocol

import torch

from rlaif_trainer.errors import BadInputError
from rlaif_trainer.modeling.generation import Generation, eos_ids, finish_generation, tokenize_prompts

__all__ = ["EngineRollout", "GenerationEngine", "VLLMEngine", "merged_weights"]


class GenerationEngine(Protocol):
    """What the RL loop needs of an inference engine."""

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None: ...

    def generate(
        self,
        prompt_ids: list[list[int]],
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        stop_ids: list[int],
    ) -> list[list[int]]: ...


def merged_weights(model: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """The policy's parameters under the base model's names, each LoRA adapter folded in.

    ``model`` is a peft model or a plain ``PreTrainedModel``. LoRA parameters are not yielded;
    ``…q_proj.base_layer.weight`` is yielded as ``…q_proj.weight`` with the active adapters'
    ``scale · B A`` added (float32, then the weight's dtype). Adapters are skipped while disabled
    (``disable_adapter()``), as the forward pass skips them.
    """
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    owners = {name: module for name, module in base.named_modules() if isinstance(module, LoraLayer)}
    for name, param in base.named_parameters():
        if ".lora_" in name:
            continue
        owner_name, _, leaf = name.rpartition(".")
        if owner_name.endswith(".base_layer"):
            owner_name = owner_name[: -len(".base_layer")]
        out_name = f"{owner_name}.{leaf}" if owner_name else leaf
        module: Any = owners.get(owner_name)  # peft's layers type their submodule dicts loosely
        if module is None or leaf != "weight" or module.disable_adapters or module.merged:
            yield out_name, param.detach()
            continue
        weight = param.detach().float()
        for adapter in module.active_adapters:
            if adapter not in module.lora_A:
                continue
            a = module.lora_A[adapter].weight.detach().float()
            b = module.lora_B[adapter].weight.detach().float()
            delta = (b @ a) * module.scaling[adapter]
            weight = weight + (delta.T if getattr(module, "fan_in_fan_out", False) else delta)
        yield out_name, weight.to(param.dtype)


class EngineRollout:
    """Sampling through an engine, with the policy's weights sent to it whenever they changed."""

    def __init__(self, engine: GenerationEngine) -> None:
        self.engine = engine
        self.synced_version: int | None = None

    def sync(self, model: Any, version: int) -> bool:
        """Send the weights if ``version`` (the optimizer step count) moved since the last sync."""
        if version == self.synced_version:
            return False
        self.engine.load_weights(merged_weights(model))
        self.synced_version = version
        return True

    def generate(
        self,
        model: Any,
        tokenizer: Any,
        formatted_prompts: list[str],
        *,
        version: int,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        device: Any,
    ) -> Generation:
        self.sync(model, version)
        q_ids, q_mask = tokenize_prompts(tokenizer, formatted_prompts, device)
        stop = eos_ids(tokenizer, model)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]
        prompts = [row[m.bool()].tolist() for row, m in zip(q_ids.cpu(), q_mask.cpu(), strict=True)]
        outs = self.engine.generate(
            prompts, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, stop_ids=stop
        )
        width = max(1, max(len(o) for o in outs))
        resp = torch.full((len(outs), width), pad_id, dtype=q_ids.dtype)
        for r, o in enumerate(outs):
            resp[r, : len(o)] = torch.tensor(o[:width], dtype=q_ids.dtype)
        # vLLM's token ids include the stop token of a row that stopped; a row that hit the
        # length limit has none, so the mask is cut at each row's length as well.
        return finish_generation(
            tokenizer, q_ids, q_mask, resp.to(q_ids.device), stop, pad_id, lengths=[len(o) for o in outs]
        )


class VLLMEngine:
    """A colocated ``vllm.LLM`` on this process's GPU, holding the policy's base checkpoint."""

    def __init__(
        self,
        model: str,
        *,
        seed: int,
        dtype: str = "bfloat16",
        gpu_memory_utilization: float = 0.3,
        max_model_len: int | None = None,
    ) -> None:
        try:
            import vllm
        except ImportError as exc:
            raise BadInputError(
                "rl.generation is 'vllm', but the vllm package is not importable in this trainer "
                f"image ({exc}); install vllm there, or set rl.generation: hf"
            ) from exc
        self._vllm = vllm
        self.llm = vllm.LLM(
            model=model,
            dtype=dtype,
            seed=seed,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            enable_prefix_caching=True,
        )

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        # The colocated engine's model runner takes (name, tensor) pairs in the checkpoint's
        # naming, as TRL's colocate mode does; the prefix cache holds the old weights' keys.
        runner_model = self.llm.llm_engine.model_executor.driver_worker.worker.model_runner.model
        runner_model.load_weights(list(weights))
        self.llm.reset_prefix_cache()

    def generate(
        self,
        prompt_ids: list[list[int]],
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        stop_ids: list[int],
    ) -> list[list[int]]:
        params = self._vllm.SamplingParams(
            n=1, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, stop_token_ids=stop_ids
        )
        outs = self.llm.generate(
            [{"prompt_token_ids": ids} for ids in prompt_ids], sampling_params=params, use_tqdm=False
        )
        return [list(o.outputs[0].token_ids) for o in outs]
