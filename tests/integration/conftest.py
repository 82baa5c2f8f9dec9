"""Integration tests run against the local Kubernetes control plane (see tests/cluster/README.md).

Fixtures: ``cluster`` (session-scoped ``tests.cluster.Cluster``; sets ``KUBECONFIG``) and
``namespace`` (a fresh namespace per test). A missing binary fails the tests with instructions.
"""

from tests.cluster.fixtures import cluster, jobset, kueue, namespace, pytest_collection_finish

__all__ = ["cluster", "jobset", "kueue", "namespace", "pytest_collection_finish"]
