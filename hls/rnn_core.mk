# vfpga RNN core C-simulation (a separate makefile beside hls/Makefile).
#
#   make -C hls -f rnn_core.mk csim BOARD=u200            testbench, g++ -O2, both C-sim bodies
#   make -C hls -f rnn_core.mk csim-sanitize BOARD=u200   the same under ASan + UBSan
#   make -C hls -f rnn_core.mk clean
#
# The board numbers come from overlay/config.py (the one source of truth) as
# -D macros. "csim" runs the testbench twice: on the default (vectorised)
# C-sim bodies and on the literal HLS loop nests (-DVF_HLS_LITERAL=1, what
# Vitis HLS synthesises), which count their pipelined iterations as they run.
# Build products go to $(BUILD)/<board>[-variant]/tb_rnn_core.

BOARD ?= u200
PYTHON ?= python3
CXX ?= g++

CONFIG_PY := ../overlay/config.py
BOARD_JSON := $(wildcard ../overlay/configs/$(BOARD).json)
BOARD_FLAGS := $(shell $(PYTHON) $(CONFIG_PY) $(BOARD))
ifeq ($(strip $(BOARD_FLAGS)),)
$(error cannot get the macros of board '$(BOARD)' from $(CONFIG_PY))
endif

CXXSTD := -std=c++14
WARN := -Wall -Wextra -Wno-unknown-pragmas
CXXFLAGS_CSIM := $(CXXSTD) -O2 $(WARN)
CXXFLAGS_SAN := $(CXXSTD) -O1 -g $(WARN) -fsanitize=address,undefined -fno-sanitize-recover=all \
                -fno-omit-frame-pointer
EXTRA_CXXFLAGS ?=

INCLUDES := -Iinclude
SRCS := rnn_core.cpp rnn_core_top.cpp tb/tb_rnn_core.cpp
DEPS := $(SRCS) tb/tb_common.h include/vfpga_isa.h include/vfpga_rnn_core.h include/vfpga_cnn_core.h $(CONFIG_PY) $(BOARD_JSON) \
        rnn_core.mk

BUILD := build
TB_FAST := $(BUILD)/$(BOARD)/tb_rnn_core
TB_HLS := $(BUILD)/$(BOARD)-hls/tb_rnn_core
TB_SAN := $(BUILD)/$(BOARD)-sanitize/tb_rnn_core
TB_SAN_HLS := $(BUILD)/$(BOARD)-sanitize-hls/tb_rnn_core

.PHONY: all csim csim-sanitize clean

all: csim

csim: $(TB_FAST) $(TB_HLS)
	$(TB_FAST)
	$(TB_HLS)

csim-sanitize: $(TB_SAN) $(TB_SAN_HLS)
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 $(TB_SAN)
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 $(TB_SAN_HLS)

$(TB_FAST): $(DEPS)
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS_CSIM) $(EXTRA_CXXFLAGS) $(INCLUDES) $(BOARD_FLAGS) $(SRCS) -o $@

$(TB_HLS): $(DEPS)
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS_CSIM) $(EXTRA_CXXFLAGS) -DVF_HLS_LITERAL=1 $(INCLUDES) $(BOARD_FLAGS) $(SRCS) -o $@

$(TB_SAN): $(DEPS)
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS_SAN) $(EXTRA_CXXFLAGS) $(INCLUDES) $(BOARD_FLAGS) $(SRCS) -o $@

$(TB_SAN_HLS): $(DEPS)
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS_SAN) $(EXTRA_CXXFLAGS) -DVF_HLS_LITERAL=1 $(INCLUDES) $(BOARD_FLAGS) $(SRCS) -o $@

# Only the RNN core's build products; hls/Makefile's stay.
clean:
	rm -f $(TB_FAST) $(TB_HLS) $(TB_SAN) $(TB_SAN_HLS)
