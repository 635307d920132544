"""vfpga.notebooks: the notebooks PYNQ's ``pynq get-notebooks`` copies (registered
through the ``pynq.notebooks`` entry point; this package's directory holds them)."""
