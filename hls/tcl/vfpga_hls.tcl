# vfpga: one Vitis HLS run of one kernel for one board.
#
#   vitis_hls -f tcl/vfpga_hls.tcl -tclargs <params.tcl> <kernel> <steps> <build dir>
#
#   params.tcl  written by `python3 ../overlay/board_build.py hls-tcl BOARD` (part, clock,
#               flow, the board macros as cflags, kernel tops/sources/VLNVs): the board
#               config is the one source of every number used here
#   kernel      cnn_core | dispatcher | rnn_core
#   steps       comma-separated, in this order: csim,csynth,cosim,export
#   build dir   the project goes to <build dir>/<kernel>, exports to <build dir>/export
#
# Export: Zynq boards get a Vivado IP catalog archive whose VLNV is the board config's
# (<vendor>:<library>:<name>:<version>, e.g. vfpga.org:hls:vf_dispatcher:1.0: what the
# PYNQ drivers bind to); Alveo boards get a Vitis kernel (.xo, flow_target vitis) named
# after the top function, for v++ -l. hls/vitis.mk drives this script.

proc vf_die {msg} {
    puts stderr "vfpga_hls.tcl: $msg"
    exit 2
}

if {[llength $argv] != 4} {
    vf_die "usage: vitis_hls -f vfpga_hls.tcl -tclargs <params.tcl> <kernel> <steps> <build dir>"
}
lassign $argv params kernel steps build_dir
set hls_dir [file normalize [file join [file dirname [info script]] ..]]
if {![file exists $params]} { vf_die "no parameter file $params (make writes it from the board config)" }
source $params
if {![info exists vf_kernel($kernel,top)]} {
    vf_die "unknown kernel '$kernel': cnn_core, dispatcher or rnn_core"
}
set steps [split $steps ,]
foreach s $steps {
    if {[lsearch -exact {csim csynth cosim export} $s] < 0} { vf_die "unknown step '$s': csim, csynth, cosim, export" }
}

set top $vf_kernel($kernel,top)
# The design sees the board macros and its headers; the Vitis kernel variant
# (Alveo boards) also sees VF_VITIS_KERNEL=1: the dispatcher top without its
# ap_none ports (the Vitis kernel flow takes AXI interfaces only).
set cflags "-std=c++14 -I$hls_dir/include $vf_cflags"
if {$vf_variant eq "vitis"} { append cflags " -DVF_VITIS_KERNEL=1" }
set tb_cflags "$cflags -I$hls_dir/tb -Wno-unknown-pragmas"

file mkdir $build_dir
cd $build_dir
open_project -reset $kernel
set_top $top
foreach src $vf_kernel($kernel,sources) {
    add_files [file join $hls_dir $src] -cflags $cflags
}
add_files -tb [file join $hls_dir $vf_kernel($kernel,tb)] -cflags $tb_cflags

if {$vf_variant eq "vitis"} {
    open_solution -reset $vf_board -flow_target vitis
} else {
    open_solution -reset $vf_board -flow_target vivado
}
set_part $vf_part
create_clock -period $vf_clock_ns -name default
# The m_axi masters move bytes; let HLS widen their bursts to the board's
# AXI data width (ddr.axi_bytes), the width the cycle model assumes.
config_interface -m_axi_max_widen_bitwidth $vf_axi_bits -m_axi_alignment_byte_size [expr {$vf_axi_bits / 8}]

if {[lsearch -exact $steps csim] >= 0} {
    puts "vfpga_hls.tcl: C simulation of $top ($vf_board)"
    csim_design -O
}
if {[lsearch -exact $steps csynth] >= 0 || [lsearch -exact $steps cosim] >= 0 || [lsearch -exact $steps export] >= 0} {
    puts "vfpga_hls.tcl: synthesis of $top for $vf_part at $vf_clock_ns ns"
    csynth_design
}
if {[lsearch -exact $steps cosim] >= 0} {
    puts "vfpga_hls.tcl: C/RTL co-simulation of $top"
    cosim_design -trace_level none
}
if {[lsearch -exact $steps export] >= 0} {
    file mkdir [file join $build_dir export]
    if {$vf_variant eq "vitis"} {
        set out [file join $build_dir export $top.xo]
        export_design -format xo -output $out
    } else {
        set out [file join $build_dir export $vf_kernel($kernel,name).zip]
        export_design -format ip_catalog -vendor $vf_kernel($kernel,vendor) -library $vf_kernel($kernel,library) \
            -version $vf_kernel($kernel,version) -ipname $vf_kernel($kernel,name) -output $out
    }
    puts "vfpga_hls.tcl: exported $out"
}
exit 0
