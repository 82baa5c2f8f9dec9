"""Two operator replicas with leader election (``--leader-election``, rlaif_operator.leader) on the
real control plane: only the Lease holder acts; killing it mid-stage hands over to the standby
without a duplicate Job; a clean stop releases the Lease so the standby takes over at once.

Both processes run under a ServiceAccount that has exactly the declared rules plus the lease rules
(:func:`rlaif_operator.rbac.leader_election_rules`), as the chart grants them."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from rlaif_operator.rbac import RBAC_RULES, leader_election_rules
from tests.cluster import Cluster
from tests.integration.operator_support import (
    OperatorProcess,
    bind_claim,
    crd_installed,
    create_job,
    job_names,
    rlaif_job,
    service_account_kubeconfig,
    wait_phase,
    wait_until,
)

pytestmark = pytest.mark.integration
__all__ = ["crd_installed"]  # fixture
LEASE = "rlaif-operator"
STAGES = ("label", "reward", "rl", "evaluate")
LEASE_DURATION = 4.0
RETRY_PERIOD = 0.5


def holder(cluster: Cluster, namespace: str) -> str | None:
    lease = cluster.get(f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{LEASE}")
    return ((lease or {}).get("spec") or {}).get("holderIdentity")


def reconciles(op: OperatorProcess) -> float:
    total = 0.0
    for line in op.metrics().splitlines():
        if line.startswith("rlaif_reconcile_total{"):
            total += float(line.rpartition(" ")[2])
    return total


def replica(cluster: Cluster, namespace: str, kubeconfig: Path, log_dir: Path, name: str) -> OperatorProcess:
    log_dir.mkdir()
    return OperatorProcess(
        cluster,
        namespace,
        log_dir,
        kubeconfig=kubeconfig,
        extra_args=[
            "--identity",
            name,
            "--leader-election",
            LEASE,
            "--leader-election-namespace",
            namespace,
            "--lease-duration",
            str(LEASE_DURATION),
            "--renew-deadline",
            "3",
            "--retry-period",
            str(RETRY_PERIOD),
        ],
    )


def test_two_replicas_one_acts_and_a_killed_leader_hands_over_without_duplicates(
    cluster: Cluster, namespace: str, crd_installed: None, tmp_path: Path
) -> None:
    kubeconfig = service_account_kubeconfig(
        cluster, namespace, RBAC_RULES + leader_election_rules(LEASE), tmp_path / "sa.kubeconfig"
    )
    a = replica(cluster, namespace, kubeconfig, tmp_path / "a", "op-a")
    b = replica(cluster, namespace, kubeconfig, tmp_path / "b", "op-b")
    try:
        a.start()
        wait_until("op-a holds the lease", lambda: holder(cluster, namespace) == "op-a", timeout=30)
        b.start()  # live (its /healthz answers) but a standby
        wait_until("op-b says it is a standby", lambda: "standby" in b.logs(), timeout=30)

        bind_claim(cluster, namespace, "workspace")
        create_job(cluster, rlaif_job("ha", namespace, run_seconds=3))
        wait_until("reward Job", lambda: "ha-reward-1" in job_names(cluster, namespace), timeout=60)
        # Only the leader acts: the standby has not reconciled anything, the leader has.
        assert reconciles(a) > 0
        assert reconciles(b) == 0
        assert holder(cluster, namespace) == "op-a"

        # SIGKILL the leader mid-stage: no release; the standby waits out the lease duration.
        a.kill()
        killed = time.monotonic()
        wait_until("op-b holds the lease", lambda: holder(cluster, namespace) == "op-b", timeout=30)
        handover = time.monotonic() - killed
        # Not before the lease expired: the standby last saw a renewal at most one retry period
        # (plus a request) before the kill.
        assert handover >= LEASE_DURATION - 2 * RETRY_PERIOD, f"took over after {handover:.1f}s"
        print(f"handover after SIGKILL: {handover:.1f}s (lease duration {LEASE_DURATION}s)")

        # The old leader comes back as a standby, then the acting op-b stops cleanly: it
        # releases the lease and op-a takes over within about a retry period.
        wait_until("rl Job", lambda: "ha-rl-1" in job_names(cluster, namespace), timeout=60)
        a.start()
        wait_until("op-a is a standby again", lambda: a.logs().count("standby") >= 1, timeout=30)
        assert holder(cluster, namespace) == "op-b"
        b.stop()
        stopped = time.monotonic()
        wait_until("op-a holds the lease again", lambda: holder(cluster, namespace) == "op-a", timeout=30)
        print(f"handover after SIGTERM: {time.monotonic() - stopped:.1f}s")
        assert "released by op-b" in b.logs()

        st = wait_phase(cluster, namespace, "ha", "Succeeded", timeout=120)
        # One Job per stage and one attempt each: no replica duplicated another's work.
        assert job_names(cluster, namespace) == sorted(f"ha-{s}-1" for s in STAGES)
        assert all(st["stages"][s]["attempts"] == 1 for s in STAGES)
        assert st["results"]["winRateVsInitial"] == 0.68
        assert reconciles(a) > 0
    finally:
        a.stop()
        b.stop()
        logs = a.logs() + b.logs()
        print(logs[-4000:])
    assert "Traceback" not in logs, logs
