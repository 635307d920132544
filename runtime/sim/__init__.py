"""The timing-only simulator of a whole shared board (:mod:`.simulator`):
the real level-1 dispatcher C++ walking real dispatch programs, frames timed
by :mod:`vfpga.runtime.hw.timeline`, no arithmetic. The experiments run on it.

Imports: the compiler, the hardware models and the driver's ISA bindings.
"""
