"""twinlog's two-VM lab with real NFS (qemu TCG, Debian bookworm guests)."""

from twinlab.cluster import Lab, node_named
from twinlab.vm import NODES, Node

__all__ = ["NODES", "Lab", "Node", "node_named"]
