"""The compiler: ONNX model -> instruction frame package (IFP) -> dispatch
program for k cores.

:mod:`.frontend` loads, cleans up, quantizes and reads ONNX models into the
layer IR (:mod:`.ir`); :mod:`.lower` tiles layers into frames of core
instructions; :mod:`.static` is the static stage (frames of every tiling
variant, packed weights, segment image: a :class:`~.static.CompiledModel`);
:mod:`.segment` adds the driver's areas to the segment layout; :mod:`.ifp`
saves and loads compiled models; :mod:`.cache` is the compile cache behind
deploy; :mod:`.dynamic` is the dynamic stage (variants and slots for k cores,
the level-1 dispatch program); :mod:`.rnn` is the same for LSTM/GRU models
on the RNN cores. :mod:`.progress` draws progress bars.

Imports: :mod:`vfpga.runtime.hw` and the driver's ISA bindings.
"""
