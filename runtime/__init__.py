"""vfpga.runtime: from ONNX models to tenants sharing a board.

One subpackage per concept; imports go one way, top to bottom (a module may
import its own subpackage and anything listed below it, never above):

    cli          the ``vfpga`` command line and the demo
    serving      ``vfpga serve``: tenants over the Open Inference Protocol (HTTP, gRPC)
    cluster      many boards as Ray actors: placement, replicas, migration, failover
    experiments  the published experiments and ``vfpga bench``'s report
    backend      the onnx.backend interface (prepare / run)
    tenants      open a board, deploy models as tenants, run, re-allocate
    sim          the timing-only simulator of a whole shared board
    models       models to run: the ONNX light model zoo, small test CNNs
    errors       the errors a user catches, in one place
    compiler     ONNX front end, static stage (IFP), dynamic stage, RNN compiler
    hw           models of the hardware: golden (numerics), cycle and pool timing
    ---
    vfpga.driver, vfpga.overlay (below the runtime)

The one edge that points up: the emulated device in vfpga.driver (the
board's stand-in beneath pynq) takes its clock from :mod:`vfpga.runtime.hw`;
hw imports nothing of the driver but its ISA bindings. host_tests/test_layout.py
checks these rules.
"""
