"""Many boards, one service: boards as Ray actors, shared by tenants with
replicas, live migration and failover.

:mod:`.placement` packs tenants' core requests onto boards (fewest boards
touched first; pure functions), :mod:`.board` is the body of a board's Ray
actor (an accelerator on an emulated, timing-only or real device),
:mod:`.pool` joins or starts Ray and starts the board actors
(``vfpga-board-<i>`` in namespace ``vfpga``, pinned by ``vfpga_<kind>``
resources), :mod:`.state` holds the controller's records (tenants, replicas,
requests), :mod:`.controller` places, routes (least outstanding first, in
batches), migrates and fails over, and :mod:`.api` is the user's view:
``vfpga.cluster(boards={"u200": 3})`` with deploy, reallocate, migrate,
stats and remove, like ``vfpga.open``. Ray is the ``cluster`` extra; it is
imported when a cluster starts.

Imports: tenants, the compiler, the driver, errors; serving imports it to
front a cluster with the same endpoint.
"""

from .api import BoardStats, Cluster, ClusterReallocation, ClusterTenant, ClusterTenantStats, cluster
from .board import NotComputed
from .placement import BoardView, place

__all__ = ["BoardStats", "BoardView", "Cluster", "ClusterReallocation", "ClusterTenant", "ClusterTenantStats",
           "NotComputed", "cluster", "place"]
