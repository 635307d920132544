# vfpga kernels through Vitis HLS (synthesis, co-simulation, export), beside
# hls/Makefile (g++ C-simulation, which needs no vendor tool).
#
#   make -C hls -f vitis.mk hls-csim   BOARD=zcu104 [KERNEL=dispatcher]  Vitis HLS C simulation
#   make -C hls -f vitis.mk hls-synth  BOARD=zcu104 [KERNEL=dispatcher]  csynth_design (reports in build/)
#   make -C hls -f vitis.mk hls-cosim  BOARD=zcu104 [KERNEL=dispatcher]  C/RTL co-simulation
#   make -C hls -f vitis.mk hls-export BOARD=zcu104 [KERNEL=dispatcher]  IP catalog .zip (Zynq) or .xo (Alveo)
#   make -C hls -f vitis.mk hls-all    BOARD=zcu104                      every kernel: synth + export
#   make -C hls -f vitis.mk hls-params BOARD=zcu104                      only the generated parameter file
#   make -C hls -f vitis.mk hls-clean  BOARD=zcu104
#
# KERNEL: dispatcher (the overlay's kernel: the dispatcher with its CNN core
# pool inside), cnn_core or rnn_core (the standalone cores). Boards: every
# overlay/configs/*.json (zcu104, ultra96v2, pynq_z2: Zynq IP; u200, u50:
# Alveo .xo). Part, clock and macros come from the board config through
# overlay/board_build.py. Products: build/vitis/<board>/{<kernel>,export}/.

BOARD ?= u200
KERNEL ?= dispatcher
PYTHON ?= python3
VITIS_HLS ?= vitis_hls

BOARD_BUILD := ../overlay/board_build.py
VBUILD := build/vitis/$(BOARD)
PARAMS := $(VBUILD)/params.tcl
HLS_TCL := tcl/vfpga_hls.tcl
KERNELS := dispatcher cnn_core rnn_core

ifeq ($(filter $(KERNEL),$(KERNELS)),)
$(error KERNEL=$(KERNEL) is not one of: $(KERNELS))
endif

.PHONY: hls-params hls-csim hls-synth hls-cosim hls-export hls-all hls-clean check-vitis-hls

# Regenerated every time: cheap, and the board config is the source.
hls-params:
	@mkdir -p $(VBUILD)
	$(PYTHON) $(BOARD_BUILD) hls-tcl $(BOARD) $(PARAMS)

check-vitis-hls:
	@command -v $(VITIS_HLS) >/dev/null 2>&1 || { \
	  echo "error: '$(VITIS_HLS)' not found on PATH. The HLS flow needs AMD Vitis HLS (2022.1 or later):"; \
	  echo "       source <Vitis install>/settings64.sh (or set VITIS_HLS=/path/to/vitis_hls)."; \
	  echo "       Without it, 'make -C hls csim BOARD=$(BOARD)' runs the C-simulation with g++."; \
	  exit 2; }

hls-csim: check-vitis-hls hls-params
	$(VITIS_HLS) -f $(HLS_TCL) -tclargs $(abspath $(PARAMS)) $(KERNEL) csim $(abspath $(VBUILD))

hls-synth: check-vitis-hls hls-params
	$(VITIS_HLS) -f $(HLS_TCL) -tclargs $(abspath $(PARAMS)) $(KERNEL) csynth $(abspath $(VBUILD))

hls-cosim: check-vitis-hls hls-params
	$(VITIS_HLS) -f $(HLS_TCL) -tclargs $(abspath $(PARAMS)) $(KERNEL) csynth,cosim $(abspath $(VBUILD))

hls-export: check-vitis-hls hls-params
	$(VITIS_HLS) -f $(HLS_TCL) -tclargs $(abspath $(PARAMS)) $(KERNEL) csynth,export $(abspath $(VBUILD))

hls-all: check-vitis-hls hls-params
	for k in $(KERNELS); do \
	  $(VITIS_HLS) -f $(HLS_TCL) -tclargs $(abspath $(PARAMS)) $$k csynth,export $(abspath $(VBUILD)) || exit 1; \
	done

hls-clean:
	rm -rf $(VBUILD)
