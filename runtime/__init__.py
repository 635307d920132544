"""vfpga.runtime: ONNX front end, quantization, compiler and the user API."""
