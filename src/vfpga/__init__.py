"""vfpga: one FPGA shared by many DNN inference tenants.

The namespace root; its parts live in driver/ (vfpga.driver), runtime/
(vfpga.runtime) and overlay/ (vfpga.overlay), mapped by setup.py.
"""

__version__ = "0.1.0"


def open(board: str = "u200", emulate=None):  # noqa: A001 - mirrors the design's vfpga.open
    """The accelerator for ``board`` (see :func:`vfpga.runtime.tenants.open`)."""
    from vfpga.runtime import tenants

    return tenants.open(board, emulate=emulate)


def cluster(boards, address=None, **kwargs):
    """Boards pooled over Ray (see :func:`vfpga.runtime.cluster.cluster`):
    ``vfpga.cluster(boards={"u200": 3}, address=None)``."""
    from vfpga.runtime import cluster as _cluster

    return _cluster.cluster(boards, address, **kwargs)
