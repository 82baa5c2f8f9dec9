"""A stage that fails for good with a reason of its own (the reward model's quality gate) shows that
reason in the Failed condition and the Warning event, not the generic BadInput."""

from __future__ import annotations

from rlaif_api.status import Reason
from rlaif_operator.reconcile import permanent_reason
from tests.unit.operator.sim import Sim

GATE_MESSAGE = {
    "stage": "reward",
    "error": "reward model held-out accuracy 0.520 on 25 pairs, 95% interval [0.335, 0.700]: the lower end is "
    "not above rewardModel.minHeldOutAccuracy=0.5",
    "permanent": True,
    "reason": "RewardModelBelowGate",
    "accuracy": 0.52,
    "accuracy_ci_low": 0.335,
    "gate_passed": False,
}


def test_the_reward_gate_reason_reaches_the_condition_and_the_event() -> None:
    sim = Sim()
    sim.step()
    sim.finish("demo-label-1", 0, {"stage": "label", "pairs": 50})
    sim.step()
    sim.finish("demo-reward-1", 65, GATE_MESSAGE)
    plan = sim.step()
    assert plan.create == [] and sim.status()["phase"] == "Failed"
    failed = sim.condition("Failed")
    assert failed["reason"] == "RewardModelBelowGate"
    assert "minHeldOutAccuracy=0.5" in failed["message"]
    assert any("minHeldOutAccuracy" in e for e in sim.events("RewardModelBelowGate"))
    assert "demo-rl-1" not in sim.jobs  # RL never starts on the failed reward model


def test_an_unknown_or_missing_reason_is_bad_input() -> None:
    assert permanent_reason({"reason": "RewardModelBelowGate"}) is Reason.REWARD_MODEL_BELOW_GATE
    assert permanent_reason({"reason": "NotAReason"}) is Reason.BAD_INPUT
    assert permanent_reason({"error": "x"}) is Reason.BAD_INPUT
    assert permanent_reason(None) is Reason.BAD_INPUT
