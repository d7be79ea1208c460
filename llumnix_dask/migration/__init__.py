"""Live migration of running requests between engine instances (Llumnix paper, section 4.3).

* :func:`migrate_out` - the source's multi-stage state machine (``source.py``)
* :class:`MigrationDestination` - the destination's sessions, pre-allocations and expiry (``destination.py``)
* endpoints the source talks through: :class:`InProcessEndpoint`, :class:`DaskEndpoint`
  (+ :func:`register_migration_handlers` on the destination worker) and :class:`NcclEndpoint`
  (+ :class:`NcclPeers` on every GPU worker)
* ``staging`` - one stage on the wire (gather pieces, messages, in-flight window)
"""

from llumnix_dask.migration.destination import MigrationDestination, UnknownMigration
from llumnix_dask.migration.endpoint import DestinationEndpoint
from llumnix_dask.migration.source import migrate_out
from llumnix_dask.migration.records import MigrationResult, StageRecord, new_migration_id
from llumnix_dask.migration.nccl import NcclEndpoint, NcclPeers
from llumnix_dask.migration.transport import (
    DaskEndpoint,
    InProcessEndpoint,
    register_migration_handlers,
    unregister_migration_handlers,
)

__all__ = [
    "DaskEndpoint",
    "DestinationEndpoint",
    "InProcessEndpoint",
    "MigrationDestination",
    "MigrationResult",
    "NcclEndpoint",
    "NcclPeers",
    "StageRecord",
    "UnknownMigration",
    "migrate_out",
    "new_migration_id",
    "register_migration_handlers",
    "unregister_migration_handlers",
]
