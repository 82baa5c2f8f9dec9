"""Local Kubernetes control plane for the integration tests (see README.md here)."""

from .binaries import SPECS, BinaryError, cache_dir, ensure
from .cluster import Cluster, ClusterError, running_cluster

__all__ = ["SPECS", "BinaryError", "Cluster", "ClusterError", "cache_dir", "ensure", "running_cluster"]
