"""Models of the hardware the HLS C++ describes, for the compiler's
estimates, the emulator's clock and the tests' expectations.

:mod:`.fixed_point` the requantization arithmetic (multiplier and shift);
:mod:`.golden` and :mod:`.rnn_golden` independent numpy models of the CNN and
RNN cores' integer semantics; :mod:`.cycle_model` and :mod:`.rnn_cycle_model`
per-instruction cycles from the HLS loop nests and the units' overlap;
:mod:`.timeline` the pool's modeled clock (frames on cores, DDR banks shared
by demand, scrubs when a core changes hands), shared by the emulated device
and the simulator.

Imports: vfpga.driver.isa and vfpga.overlay only.
"""
