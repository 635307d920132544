"""Models to run: :mod:`.zoo` the ONNX light model zoo (ResNet-50, VGG-19,
SqueezeNet, Inception v1, ...) with random weights substituted; :mod:`.small`
small CNNs and LSTM/GRU models built with onnx.helper, and a small quantized
layer graph, for the demo, the tests and the benchmarks.

Imports: the compiler (IR and fixed-point helpers).
"""
