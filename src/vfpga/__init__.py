"""vfpga: one FPGA shared by many DNN inference tenants.

The namespace root; its parts live in driver/ (vfpga.driver), runtime/
(vfpga.runtime) and overlay/ (vfpga.overlay), mapped by setup.py.
"""

__version__ = "0.1.0"
