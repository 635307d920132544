"""vfpga.driver: devices (board and emulated), register access, DMA buffers
and the CNN core's PYNQ driver."""
