# vfpga overlay for a Zynq board: Vivado block design, implementation, bitstream.
#
#   vivado -mode batch -source tcl/vfpga_bd.tcl -tclargs <params.tcl> <ip repo> <build dir> <out dir>
#
#   params.tcl  written by `python3 board_build.py bd-tcl BOARD` (part, flow zynq|zynqmp,
#               clock, AXI width, the dispatcher's VLNV and register window, the DDR window)
#   ip repo     where `make -C hls -f vitis.mk hls-export KERNEL=dispatcher` unpacked the IP
#   out dir     receives vfpga_<board>.bit and vfpga_<board>.hwh (same base name, as PYNQ loads them)
#
# The design: the processing system (board preset), the level-1 dispatcher kernel (the
# CNN core pool is inside it), its AXI-Lite slave on the PS's general-purpose master at
# the board config's dispatcher.base_address, its m_axi bank ports (`bank0`, one per DDR
# bank of the config: the Zynq boards have one) through a SmartConnect to a
# high-performance slave port of the PS (the DDR), its `irq` line through
# an AXI interrupt controller (what PYNQ's Interrupt class expects) to the PS, and a
# 64-bit free-running cycle counter on the kernel clock driving its `clock` input.
# overlay/Makefile drives this script.

proc vf_die {msg} {
    puts stderr "vfpga_bd.tcl: $msg"
    exit 2
}

if {[llength $argv] != 4} {
    vf_die "usage: vivado -mode batch -source vfpga_bd.tcl -tclargs <params.tcl> <ip repo> <build dir> <out dir>"
}
lassign $argv params ip_repo build_dir out_dir
if {![file exists $params]} { vf_die "no parameter file $params (make writes it from the board config)" }
source $params
if {![file isdirectory $ip_repo]} {
    vf_die "no dispatcher IP at $ip_repo: run make -C hls -f vitis.mk hls-export BOARD=$vf_board KERNEL=dispatcher"
}

set design vfpga
set name vfpga_$vf_board
create_project -force $name [file join $build_dir $name] -part $vf_part
set_property ip_repo_paths [list [file normalize $ip_repo]] [current_project]
update_ip_catalog
create_bd_design $design

# ---- processing system ------------------------------------------------------------
if {$vf_flow eq "zynq"} {
    set ps [create_bd_cell -type ip -vlnv xilinx.com:ip:processing_system7 ps]
    apply_bd_automation -rule xilinx.com:bd_rule:processing_system7 \
        -config {make_external "FIXED_IO, DDR" apply_board_preset "1"} $ps
    set_property -dict [list \
        CONFIG.PCW_FPGA0_PERIPHERAL_FREQMHZ $vf_clock_mhz \
        CONFIG.PCW_USE_M_AXI_GP0 1 \
        CONFIG.PCW_USE_S_AXI_HP0 1 \
        CONFIG.PCW_S_AXI_HP0_DATA_WIDTH [expr {min($vf_axi_bits, 64)}] \
        CONFIG.PCW_USE_FABRIC_INTERRUPT 1 \
        CONFIG.PCW_IRQ_F2P_INTR 1] $ps
    set pl_clk ps/FCLK_CLK0
    set pl_resetn ps/FCLK_RESET0_N
    set ps_master ps/M_AXI_GP0
    set ps_hp ps/S_AXI_HP0
    set ps_irq ps/IRQ_F2P
    set ps_clk_pins {ps/M_AXI_GP0_ACLK ps/S_AXI_HP0_ACLK}
} elseif {$vf_flow eq "zynqmp"} {
    set ps [create_bd_cell -type ip -vlnv xilinx.com:ip:zynq_ultra_ps_e ps]
    apply_bd_automation -rule xilinx.com:bd_rule:zynq_ultra_ps_e -config {apply_board_preset "1"} $ps
    set_property -dict [list \
        CONFIG.PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ $vf_clock_mhz \
        CONFIG.PSU__USE__M_AXI_GP0 1 \
        CONFIG.PSU__USE__M_AXI_GP1 0 \
        CONFIG.PSU__USE__M_AXI_GP2 0 \
        CONFIG.PSU__USE__S_AXI_GP2 1 \
        CONFIG.PSU__SAXIGP2__DATA_WIDTH [expr {min($vf_axi_bits, 128)}] \
        CONFIG.PSU__USE__IRQ0 1] $ps
    set pl_clk ps/pl_clk0
    set pl_resetn ps/pl_resetn0
    set ps_master ps/M_AXI_HPM0_FPD
    set ps_hp ps/S_AXI_HP0_FPD
    set ps_irq ps/pl_ps_irq0
    set ps_clk_pins {ps/maxihpm0_fpd_aclk ps/saxihp0_fpd_aclk}
} else {
    vf_die "flow '$vf_flow' is not a Zynq flow (Alveo cards are linked with v++: make BOARD=$vf_board)"
}

# ---- kernel, reset, interconnect ----------------------------------------------------
set disp [create_bd_cell -type ip -vlnv $vf_disp_vlnv dispatcher]
set rst [create_bd_cell -type ip -vlnv xilinx.com:ip:proc_sys_reset rst]
set ctrl_ic [create_bd_cell -type ip -vlnv xilinx.com:ip:smartconnect ctrl_ic]
set_property -dict [list CONFIG.NUM_SI 1 CONFIG.NUM_MI 2] $ctrl_ic
set mem_ic [create_bd_cell -type ip -vlnv xilinx.com:ip:smartconnect mem_ic]
set_property -dict [list CONFIG.NUM_SI $vf_banks CONFIG.NUM_MI 1] $mem_ic
set intc [create_bd_cell -type ip -vlnv xilinx.com:ip:axi_intc intc]
set_property -dict [list CONFIG.C_IRQ_CONNECTION 1 CONFIG.C_KIND_OF_INTR 0xFFFFFFFF] $intc
# the dispatcher's irq port is 8 bits wide (uint8_t, ap_none); bit 0 is the level
set irq_bit [create_bd_cell -type ip -vlnv xilinx.com:ip:xlslice irq_bit]
set_property -dict [list CONFIG.DIN_WIDTH 8 CONFIG.DIN_FROM 0 CONFIG.DIN_TO 0] $irq_bit
set irq_cat [create_bd_cell -type ip -vlnv xilinx.com:ip:xlconcat irq_cat]
set_property -dict [list CONFIG.NUM_PORTS 1] $irq_cat
# the cycle counter behind the dispatcher's `clock` input (ap_none, 64 bits)
set counter [create_bd_cell -type ip -vlnv xilinx.com:ip:c_counter_binary cycle_counter]
set_property -dict [list CONFIG.Output_Width 64 CONFIG.Restrict_Count false] $counter

# clocks and resets: one clock domain, the kernel clock of the board config
set clk_pins [concat $ps_clk_pins {dispatcher/ap_clk ctrl_ic/aclk mem_ic/aclk intc/s_axi_aclk rst/slowest_sync_clk cycle_counter/CLK}]
connect_bd_net [get_bd_pins $pl_clk] {*}[lmap p $clk_pins {get_bd_pins $p}]
connect_bd_net [get_bd_pins $pl_resetn] [get_bd_pins rst/ext_reset_in]
connect_bd_net [get_bd_pins rst/peripheral_aresetn] [get_bd_pins dispatcher/ap_rst_n] \
    [get_bd_pins intc/s_axi_aresetn]
connect_bd_net [get_bd_pins rst/interconnect_aresetn] [get_bd_pins ctrl_ic/aresetn] [get_bd_pins mem_ic/aresetn]

# control: PS master -> dispatcher registers, interrupt controller registers
connect_bd_intf_net [get_bd_intf_pins $ps_master] [get_bd_intf_pins ctrl_ic/S00_AXI]
connect_bd_intf_net [get_bd_intf_pins ctrl_ic/M00_AXI] [get_bd_intf_pins dispatcher/s_axi_control]
connect_bd_intf_net [get_bd_intf_pins ctrl_ic/M01_AXI] [get_bd_intf_pins intc/s_axi]
# memory: the dispatcher's bank ports onto the DDR through an HP port
for {set b 0} {$b < $vf_banks} {incr b} {
    connect_bd_intf_net [get_bd_intf_pins dispatcher/m_axi_bank$b] [get_bd_intf_pins mem_ic/[format S%02d_AXI $b]]
}
connect_bd_intf_net [get_bd_intf_pins mem_ic/M00_AXI] [get_bd_intf_pins $ps_hp]
# interrupt: irq[0] -> axi_intc -> PS
connect_bd_net [get_bd_pins dispatcher/irq] [get_bd_pins irq_bit/Din]
connect_bd_net [get_bd_pins irq_bit/Dout] [get_bd_pins irq_cat/In0]
connect_bd_net [get_bd_pins irq_cat/dout] [get_bd_pins intc/intr]
connect_bd_net [get_bd_pins intc/irq] [get_bd_pins $ps_irq]
# cycles
connect_bd_net [get_bd_pins cycle_counter/Q] [get_bd_pins dispatcher/clock]

# ---- address map: the board config's window for the dispatcher ------------------------------
assign_bd_address
set seg [get_bd_addr_segs -of_objects [get_bd_addr_spaces $ps_master] -filter {NAME =~ "*dispatcher*"}]
if {[llength $seg] != 1} {
    set seg [lindex [get_bd_addr_segs -quiet */SEG_dispatcher_Reg] 0]
}
if {$seg eq ""} { vf_die "cannot find the dispatcher's address segment" }
set_property offset $vf_disp_base $seg
set_property range $vf_disp_range $seg

validate_bd_design
save_bd_design

# ---- implementation ----------------------------------------------------------------------
set bd_file [get_files $design.bd]
generate_target all $bd_file
set wrapper [make_wrapper -files $bd_file -top]
add_files -norecurse $wrapper
set_property top ${design}_wrapper [current_fileset]
update_compile_order -fileset sources_1
launch_runs impl_1 -to_step write_bitstream -jobs 8
wait_on_run impl_1
if {[get_property PROGRESS [get_runs impl_1]] ne "100%"} {
    vf_die "implementation did not finish: see [get_property DIRECTORY [get_runs impl_1]]/runme.log"
}

# ---- PYNQ's files: <name>.bit and <name>.hwh side by side -----------------------------------
file mkdir $out_dir
set impl_dir [get_property DIRECTORY [get_runs impl_1]]
set bit [lindex [glob -nocomplain [file join $impl_dir *.bit]] 0]
set proj_dir [get_property DIRECTORY [current_project]]
set hwh [lindex [concat \
    [glob -nocomplain [file join $proj_dir $name.gen sources_1 bd $design hw_handoff $design.hwh]] \
    [glob -nocomplain [file join $proj_dir $name.srcs sources_1 bd $design hw_handoff $design.hwh]]] 0]
if {$bit eq "" || $hwh eq ""} { vf_die "bitstream ($bit) or hardware handoff ($hwh) missing" }
file copy -force $bit [file join $out_dir $name.bit]
file copy -force $hwh [file join $out_dir $name.hwh]
puts "vfpga_bd.tcl: wrote [file join $out_dir $name.bit] and [file join $out_dir $name.hwh]"
exit 0
