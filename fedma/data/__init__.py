"""Image–caption data: the on-disk manifest format, partitioning, and the bundled demo set."""

from fedma.data.manifest import DataError, Record, read_manifest
from fedma.data.partition import dirichlet_partition

__all__ = ["DataError", "Record", "dirichlet_partition", "read_manifest"]
