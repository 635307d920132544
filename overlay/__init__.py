"""vfpga.overlay: board configurations, the build parameters of the vendor
flows (board_build) and, on a board, the PYNQ overlay (vfpga_overlay, which
imports pynq: loaded on first use of ``VfpgaOverlay`` so that the configs
stay importable anywhere)."""

from .config import BoardConfigError, available, c_macros, load

__all__ = ["BoardConfigError", "VfpgaOverlay", "available", "c_macros", "load"]


def __getattr__(name):
    if name == "VfpgaOverlay":
        from .vfpga_overlay import VfpgaOverlay

        return VfpgaOverlay
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
