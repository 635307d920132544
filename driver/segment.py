"""A tenant segment: one contiguous block of device memory in one DDR bank.

Everything a tenant's program touches (instructions, weights, activations,
I/O) lives inside its segment, addressed by offsets relative to
``physical_address``; the cores check every access against the segment
limit. The segment is a single ``pynq.allocate``'d uint8 buffer, so it works
on any PYNQ device; the host edits its copy and syncs just the byte ranges
it changed, because copies to and from device memory are what costs time.
"""

from __future__ import annotations

import numpy as np
import pynq


class SegmentBoundsError(IndexError):
    """A byte range that does not lie inside the segment."""


def bank_memory(device, bank: int):
    """The PYNQ memory object of DDR bank ``bank`` on ``device``: what
    ``pynq.allocate(target=...)`` takes. Devices with several banks look them
    up by index (XRT's get_memory_by_idx); a single-bank device's bank 0 is
    its default memory."""
    getter = getattr(device, "get_memory_by_idx", None)
    if getter is not None:
        try:
            return getter(bank)
        except (RuntimeError, KeyError):
            if bank != 0:
                raise
    if bank == 0:
        return device.default_memory
    raise ValueError(f"device {device!r} has no memory bank {bank}")


class Segment:
    """``size`` bytes of device memory in DDR bank ``bank`` of ``device``
    (the active PYNQ device by default). Use as a context manager or call
    :meth:`free`."""

    def __init__(self, size: int, bank: int = 0, device=None):
        if int(size) <= 0:
            raise ValueError(f"a segment needs at least one byte, not {size}")
        if device is None:
            device = pynq.Device.active_device
        self.size = int(size)
        self.bank = bank
        self.device = device
        self._buf = pynq.allocate((self.size,), np.uint8, target=bank_memory(device, bank))
        # the host copy as a plain array: slicing a PynqBuffer makes a buffer object per slice
        self._host = self._buf.view(np.ndarray)

    # ---- properties ------------------------------------------------------------
    @property
    def physical_address(self) -> int:
        """Device address of offset 0 (the value a core's ``seg`` register takes)."""
        return self._live().physical_address

    @property
    def buffer(self):
        """The underlying PynqBuffer (the host copy, uint8)."""
        return self._live()

    @property
    def freed(self) -> bool:
        return self._buf is None

    # ---- host copy ----------------------------------------------------------------
    def write(self, offset: int, data) -> None:
        """Copies ``data`` (bytes-like, or a numpy array of any dtype, taken as
        its raw bytes) into the host copy at ``offset``. Does not sync."""
        if isinstance(data, np.ndarray):
            src = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        else:
            src = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
        self._check(offset, src.size)
        self._live()
        self._host[offset:offset + src.size] = src

    def read(self, offset: int, nbytes: int) -> np.ndarray:
        """A copy of ``nbytes`` host-copy bytes at ``offset`` (uint8). Does not sync."""
        self._check(offset, nbytes)
        self._live()
        return self._host[offset:offset + nbytes].copy()

    # ---- device copy ----------------------------------------------------------------
    def sync_to_device(self, offset: int = 0, nbytes: int | None = None) -> None:
        """Host copy -> device memory for [offset, offset + nbytes) (to the end by default)."""
        view = self._range(offset, nbytes)
        if view.size:
            view.sync_to_device()

    def sync_from_device(self, offset: int = 0, nbytes: int | None = None) -> None:
        """Device memory -> host copy for [offset, offset + nbytes) (to the end by default)."""
        view = self._range(offset, nbytes)
        if view.size:
            view.sync_from_device()

    # ---- lifetime ----------------------------------------------------------------
    def free(self) -> None:
        """Returns the memory to its bank; the segment is unusable afterwards."""
        if self._buf is not None:
            buf, self._buf, self._host = self._buf, None, None
            buf.freebuffer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.free()

    def __repr__(self):
        where = "freed" if self._buf is None else f"phys={self._buf.physical_address:#x}"
        return f"Segment(size={self.size}, bank={self.bank}, {where})"

    # ---- helpers ----------------------------------------------------------------
    def _live(self):
        if self._buf is None:
            raise RuntimeError("segment has been freed")
        return self._buf

    def _check(self, offset: int, nbytes: int) -> None:
        if not (isinstance(offset, (int, np.integer)) and isinstance(nbytes, (int, np.integer))):
            raise TypeError(f"offset and nbytes must be integers, not {type(offset).__name__} "
                            f"and {type(nbytes).__name__}")
        if offset < 0 or nbytes < 0 or offset + nbytes > self.size:
            raise SegmentBoundsError(f"byte range [{offset}, {offset + nbytes}) is outside the "
                                     f"segment [0, {self.size})")

    def _range(self, offset: int, nbytes: int | None):
        if nbytes is None:
            self._check(offset, 0)
            nbytes = self.size - offset
        self._check(offset, nbytes)
        return self._live()[offset:offset + nbytes]
