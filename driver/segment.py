"""A tenant segment: the device memory a tenant's programs reach.

Everything a tenant's program touches (instructions, weights, activations,
I/O) lives inside its segment, addressed by segment offsets; the cores check
every access against the segment limit. The host edits its copy and syncs
just the byte ranges it changed, because copies to and from device memory
are what costs time.

Two layouts:

* contiguous (every board's default): one ``pynq.allocate``'d uint8 buffer
  in one DDR bank; offset a is at ``physical_address + a``.
* striped (``stripe``: a board whose cores have ``ddr.core_ports`` P > 1
  bank ports, u200_bigcore; :func:`vfpga.overlay.config.segment_stripe`):
  P equal buffers, one in each of banks 0 .. P-1 at the same offset, so
  that a core's beat reads one bus word from each bank at once. Offset a is
  in part (a // W) % P at part offset (a // (W * P)) * W + a % W (W: a bus
  word). ``physical_address`` is part 0's; the dispatcher is told the
  layout by the tenant's VF_TENANT_STRIPED control bit. Syncs scatter the
  host copy's bytes to the parts (and gather them back) exactly: a range
  touches in each part one contiguous run, and only those bytes move. The
  parts are allocated and freed as one step, so segments allocated from
  several threads at once stay at one offset of their banks. A C writer
  may fill a range straight into the parts (``stripe_target``, then
  ``sync_parts_to_device``: a request's folded input), leaving the host
  copy of that range stale until it is synced back.
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np
import pynq

from vfpga.driver import host_isa

SYNC_PLANS_KEPT = 256  # (offset, nbytes) -> the buffer runs it syncs, kept per segment (Segment._sync_plan)
_marshal = host_isa.best_module("_marshal")  # the striped copies' C loop (hls/host/vfpga_marshal.c)
# A striped segment's parts are allocated, and freed, as one step: the banks' allocators are independent,
# so two segments allocated at once (two deploys side by side) would otherwise take each other's offsets
# in some banks, and a partly freed segment would leave the banks out of step for the next one.
_STRIPED_ALLOCATION = threading.Lock()


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


class SegmentPlacementError(MemoryError):
    """A striped segment's parts did not land at the same offset of their banks."""


class Segment:
    """``size`` bytes of device memory in DDR bank ``bank`` of ``device``
    (the active PYNQ device by default), or striped over ``stripe.ports``
    banks from bank 0 on (``stripe``: a :class:`vfpga.overlay.config.Stripe`,
    None or one port: contiguous). Use as a context manager or call
    :meth:`free`."""

    def __init__(self, size: int, bank: int = 0, device=None, stripe=None):
        if int(size) <= 0:
            raise ValueError(f"a segment needs at least one byte, not {size}")
        if device is None:
            device = pynq.Device.active_device
        self.size = int(size)
        self.bank = bank
        self.device = device
        self.stripe = stripe if stripe is not None and stripe.ports > 1 else None
        self._buf = None
        self._plans: dict[tuple[int, int | None], tuple[int, int, list]] = {}  # _sync_plan's
        if self.stripe is None:
            self._parts = [pynq.allocate((self.size,), np.uint8, target=bank_memory(device, bank))]
            self._buf = self._parts[0]
            # the host copy as a plain array: slicing a PynqBuffer makes a buffer object per slice
            self._host = self._buf.view(np.ndarray)
            self._cache_ops = [_CacheOps(self._buf)]
            return
        if bank != 0:
            raise ValueError(f"a striped segment starts in bank 0 (its parts are in banks 0..{stripe.ports - 1}), "
                             f"not in bank {bank}")
        self._parts = self._allocate_parts(device, stripe)
        self._buf = self._parts[0]
        self._host = np.zeros(self.size, np.uint8)  # the host copy, in segment order
        self._cache_ops = [_CacheOps(b) for b in self._parts]
        # the addresses the striped copies (C) take, taken once: the host copy and the parts never move
        self._image_address = self._host.ctypes.data
        self._part_addresses = _marshal.ffi.new("uintptr_t[]", [ops.address for ops in self._cache_ops])
        self._stripe_c = _marshal.ffi.new("vf_stripe_t *", {"parts": self._part_addresses, "ports": stripe.ports,
                                                             "word": stripe.word})

    def _allocate_parts(self, device, stripe) -> list:
        with _STRIPED_ALLOCATION:
            return self._allocate_parts_in_step(device, stripe)

    def _allocate_parts_in_step(self, device, stripe) -> list:
        part = stripe.part_bytes(self.size)
        parts = []
        try:
            for p in range(stripe.ports):
                parts.append(pynq.allocate((part,), np.uint8, target=bank_memory(device, p)))
            base = parts[0].physical_address
            for p, b in enumerate(parts):
                if b.physical_address != base + p * stripe.bank_stride:
                    raise SegmentPlacementError(
                        f"striped segment: bank {p}'s part is at {b.physical_address:#x}, not at the first "
                        f"part's offset ({base + p * stripe.bank_stride:#x}); the banks' allocations are out of "
                        "step (memory allocated in some banks only)")
        except BaseException:
            for b in parts:
                b.freebuffer()
            raise
        return parts

    # ---- properties ------------------------------------------------------------
    @property
    def physical_address(self) -> int:
        """Device address of offset 0 (the value a core's ``seg`` register
        takes; a striped segment's first part's, the dispatcher's seg_base)."""
        return self._live().physical_address

    @property
    def striped(self) -> bool:
        return self.stripe is not None

    @property
    def buffer(self):
        """The underlying PynqBuffer (the host copy, uint8) of a contiguous segment."""
        if self.stripe is not None:
            raise TypeError("a striped segment has one buffer per bank: use parts")
        return self._live()

    @property
    def parts(self) -> list:
        """The PynqBuffers holding the segment: one, or one per bank of a
        striped segment (part p in bank p)."""
        self._live()
        return list(self._parts)

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

    def view(self, offset: int, nbytes: int) -> np.ndarray:
        """The host copy's bytes [offset, offset + nbytes) as a writable uint8
        view (no copy, no sync): a writer fills it in place, then syncs the range."""
        self._check(offset, nbytes)
        self._live()
        return self._host[offset:offset + nbytes]

    def read(self, offset: int, nbytes: int) -> np.ndarray:
        """A copy of ``nbytes`` host-copy bytes at ``offset`` (uint8). Does not sync."""
        self._check(offset, nbytes)
        self._live()
        return self._host[offset:offset + nbytes].copy()

    def pack_into(self, fmt, offset: int, *values) -> None:
        """Packs ``values`` with ``fmt`` (a struct.Struct) into the host copy at
        ``offset`` (a ring entry). Does not sync. (No view is made: a numpy
        slice, on every request, costs more than packing the entry.)"""
        self._check(offset, fmt.size)
        self._live()
        fmt.pack_into(self._host, offset, *values)

    def unpack_from(self, fmt, offset: int) -> tuple:
        """The values ``fmt`` (a struct.Struct) unpacks from the host copy at
        ``offset`` (a completion record). Does not sync."""
        self._check(offset, fmt.size)
        self._live()
        return fmt.unpack_from(self._host, offset)

    # ---- device copy ----------------------------------------------------------------
    def sync_to_device(self, offset: int = 0, nbytes: int | None = None) -> None:
        """Host copy -> device memory for [offset, offset + nbytes) (to the end by default)."""
        lo, hi, runs = self._sync_plan(offset, nbytes)
        if self.stripe is not None:
            _marshal.lib.vf_stripe_copy(self._image_address, self._stripe_c, lo, hi, 1)
        for ops, at, n in runs:
            ops.flush(at, n)

    def sync_from_device(self, offset: int = 0, nbytes: int | None = None) -> None:
        """Device memory -> host copy for [offset, offset + nbytes) (to the end by default)."""
        lo, hi, runs = self._sync_plan(offset, nbytes)
        for ops, at, n in runs:
            ops.invalidate(at, n)
        if self.stripe is not None:
            _marshal.lib.vf_stripe_copy(self._image_address, self._stripe_c, lo, hi, 0)

    # ---- writing a striped segment's parts directly ---------------------------------
    def stripe_target(self, offset: int, nbytes: int):
        """For a C writer that fills [offset, offset + nbytes) of a striped
        segment straight into its parts (the input fold: one pass over the
        bytes instead of two): the ``vf_stripe_t *`` its call takes
        (hls/host/vfpga_marshal.h), once the range is checked. Then
        :meth:`sync_parts_to_device` the range."""
        if self.stripe is None:
            raise ValueError("stripe_target: the segment is contiguous (write its host copy, then sync it)")
        self._span(offset, nbytes)
        return self._stripe_c

    def sync_parts_to_device(self, offset: int, nbytes: int) -> None:
        """The parts' bytes of [offset, offset + nbytes) -> device memory,
        after a writer filled the parts through :meth:`stripe_target`. The
        host copy of the range is left as it was: stale until that range is
        synced from the device (a reader syncs before it reads)."""
        if self.stripe is None:
            raise ValueError("sync_parts_to_device: the segment is contiguous (sync_to_device its range)")
        for ops, at, n in self._sync_plan(offset, nbytes)[2]:
            ops.flush(at, n)

    # ---- which buffers a sync touches --------------------------------------------
    def _sync_plan(self, offset: int, nbytes: int | None) -> tuple[int, int, list]:
        """(offset, end, [(cache ops, offset in its buffer, bytes)]) of a
        range of a live segment, checked: one run of the buffer when
        contiguous, one run per part holding bytes of it when striped. Kept
        per range (SYNC_PLANS_KEPT): a tenant syncs the same ranges on every
        request (its input, ring entries, records and outputs), and working a
        plan out costs more than syncing a ring entry."""
        self._live()
        key = (offset, nbytes)
        plain = type(offset) is int and (nbytes is None or type(nbytes) is int)  # (numpy ints: not kept)
        plan = self._plans.get(key) if plain else None
        if plan is None:
            offset, nbytes = self._span(offset, nbytes)
            if self.stripe is None:
                runs = [(self._cache_ops[0], offset, nbytes)] if nbytes else []
            else:
                runs = [(self._cache_ops[p], lo, hi - lo) for p, lo, hi in self._part_runs(offset, nbytes)]
            plan = (offset, offset + nbytes, runs)
            if plain:
                if len(self._plans) >= SYNC_PLANS_KEPT:
                    self._plans.clear()
                self._plans[key] = plan
        return plan

    def _part_runs(self, offset: int, nbytes: int) -> list[tuple[int, int, int]]:
        """(part, lo, hi) for each part holding bytes of a checked range: the
        bytes of [offset, offset + nbytes) in part p are its run [lo, hi)."""
        if nbytes == 0:
            return []
        st, end = self.stripe, offset + nbytes
        w0, w1 = offset // st.word, (end - 1) // st.word
        runs = []
        for p in range(st.ports):
            first = w0 + (p - w0) % st.ports   # the range's first and last words in part p
            last = w1 - (w1 - p) % st.ports
            if first > last:
                continue
            a, b = max(offset, first * st.word), min(end, (last + 1) * st.word)
            runs.append((p, st.place(a)[1], st.place(b - 1)[1] + 1))
        return runs

    # ---- lifetime ----------------------------------------------------------------
    def free(self) -> None:
        """Returns the memory to its bank(s); the segment is unusable afterwards."""
        if self._buf is not None:
            parts, self._parts, self._buf, self._host = self._parts, [], None, None
            with _STRIPED_ALLOCATION if self.stripe is not None else contextlib.nullcontext():
                for buf in parts:
                    buf.freebuffer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.free()

    def __repr__(self):
        where = "freed" if self._buf is None else f"phys={self._buf.physical_address:#x}"
        layout = f"striped over {self.stripe.ports} banks" if self.stripe else f"bank={self.bank}"
        return f"Segment(size={self.size}, {layout}, {where})"

    # ---- helpers ----------------------------------------------------------------
    def _live(self):
        if self._buf is None:
            raise RuntimeError("segment has been freed")
        return self._buf

    def _check(self, offset: int, nbytes: int) -> None:
        if type(offset) is not int or type(nbytes) is not int:  # (plain ints first: every sync checks)
            if not (isinstance(offset, (int, np.integer)) and isinstance(nbytes, (int, np.integer))):
                raise TypeError(f"offset and nbytes must be integers, not {type(offset).__name__} "
                                f"and {type(nbytes).__name__}")
        if offset < 0 or nbytes < 0 or offset + nbytes > self.size:
            raise SegmentBoundsError(f"byte range [{offset}, {offset + nbytes}) is outside the "
                                     f"segment [0, {self.size})")

    def _span(self, offset: int, nbytes: int | None) -> tuple[int, int]:
        """(offset, nbytes) of a live segment's range, checked; nbytes None: to the end."""
        if nbytes is None:
            self._check(offset, 0)
            nbytes = self.size - offset
        self._check(offset, nbytes)
        self._live()
        return offset, nbytes


class _CacheOps:
    """Flush and invalidate of a byte range of one PynqBuffer, as that
    range's own PynqBuffer view would call them (``PynqBuffer.flush``:
    ``device.flush(bo, offset, virtual address, nbytes)``), without making the
    view: a view costs more than syncing a ring entry."""

    __slots__ = ("device", "bo", "offset", "address", "coherent")

    def __init__(self, buf):
        self.device, self.bo, self.offset = buf.device, buf.bo, buf.offset
        self.address, self.coherent = buf.virtual_address, buf.coherent

    def flush(self, lo: int, nbytes: int) -> None:
        if not self.coherent:
            self.device.flush(self.bo, self.offset + lo, self.address + lo, nbytes)

    def invalidate(self, lo: int, nbytes: int) -> None:
        if not self.coherent:
            self.device.invalidate(self.bo, self.offset + lo, self.address + lo, nbytes)
