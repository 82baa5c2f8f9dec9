"""The e2e tier: real pods on the real test node (tests/cluster/node.py) from the Dockerfile's images.

Fixtures: ``node_cluster`` (session; a control plane with the real kubelet node and the images
imported) and the shared ``pytest_collection_finish`` hook, which builds the node's binaries and the
images before the first test when a collected test needs them.
"""

from tests.cluster.fixtures import node_cluster, pytest_collection_finish

__all__ = ["node_cluster", "pytest_collection_finish"]
