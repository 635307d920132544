"""vfpga.overlay: board configurations (and, on a board, the PYNQ overlay)."""

from .config import BoardConfigError, available, c_macros, load

__all__ = ["BoardConfigError", "available", "c_macros", "load"]
