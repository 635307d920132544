"""The vendor build flows, as far as a host without Vitis/Vivado can check
them: the generated parameters and v++ configs follow the board configs, the
HLS and block-design tcl run to the end under tclsh with every vendor command
stubbed (recording what they were asked), the make targets stop with a clear
message when a tool is missing, and the overlay class finds the dispatcher.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from harness import REPO_ROOT as ROOT

from vfpga import overlay
from vfpga.overlay import board_build
from vfpga.overlay.vfpga_overlay import OverlayError, board_of, check_address_map, find_dispatcher

TCLSH = shutil.which("tclsh")
needs_tclsh = pytest.mark.skipif(TCLSH is None, reason="tclsh not installed")

# Vendor tcl commands, stubbed: each appends "<command> <args>" to the log and
# returns its last argument (a name to chain on) unless given a value here.
STUBS = r"""
set ::vf_log {}
proc vf_stub {name {result __last}} {
    proc $name {args} [string map [list @N $name @R $result] {
        lappend ::vf_log [concat @N $args]
        if {"@R" eq "__last"} { return [lindex $args end] }
        return "@R"
    }]
}
foreach c {open_project set_top add_files open_solution set_part create_clock config_interface csim_design
           csynth_design cosim_design export_design create_project set_property update_ip_catalog
           create_bd_design apply_bd_automation connect_bd_net connect_bd_intf_net assign_bd_address
           validate_bd_design save_bd_design generate_target add_files update_compile_order launch_runs
           wait_on_run get_bd_pins get_bd_intf_pins get_bd_addr_spaces get_runs current_fileset} { vf_stub $c }
vf_stub current_project proj
vf_stub get_files vfpga.bd
vf_stub make_wrapper wrapper.v
proc create_bd_cell {args} { lappend ::vf_log [concat create_bd_cell $args]; return [lindex $args end] }
proc get_bd_addr_segs {args} { lappend ::vf_log [concat get_bd_addr_segs $args]; return SEG_dispatcher_Reg }
proc get_property {prop obj} {
    if {$prop eq "PROGRESS"} { return 100% }
    if {$obj eq "impl_1"} { return $::vf_impl }
    return $::vf_proj
}
rename exit vf_real_exit
proc exit {{code 0}} {
    set f [open $::vf_logfile w]; foreach l $::vf_log { puts $f $l }; close $f
    vf_real_exit $code
}
"""


def run_tcl(script, tclargs, tmp_path, extra=""):
    driver = tmp_path / "driver.tcl"
    log = tmp_path / "calls.log"
    driver.write_text(STUBS + f"set ::vf_logfile {{{log}}}\n{extra}\nset argv [list {' '.join(map(str, tclargs))}]\n"
                      f"source {{{script}}}\n")
    r = subprocess.run([TCLSH, str(driver)], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    calls = log.read_text().splitlines() if log.exists() else []
    return r, calls


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


@needs_tclsh
@pytest.mark.parametrize("board", overlay.available())
@pytest.mark.parametrize("kernel", sorted(board_build.KERNELS))
def test_hls_tcl_runs_every_step_with_the_config_numbers(board, kernel, tmp_path):
    cfg = overlay.load(board)
    params = write(tmp_path, "params.tcl", board_build.hls_tcl(cfg))
    r, calls = run_tcl(os.path.join(ROOT, "hls", "tcl", "vfpga_hls.tcl"),
                       [params, kernel, "csim,csynth,cosim,export", tmp_path / "b"], tmp_path)
    assert r.returncode == 0, r.stderr
    k = board_build.KERNELS[kernel]
    assert f"set_top {k['top']}" in calls
    assert f"set_part {cfg['part']}" in calls
    assert f"create_clock -period {board_build.clock_period_ns(cfg)} -name default" in calls
    sources = [c for c in calls if c.startswith("add_files") and "-tb" not in c]
    assert [os.path.basename(c.split()[1]) for c in sources] == k["sources"]
    assert all(f"-DVF_ICP={cfg['cnn_core']['icp']}" in c and f"-DVF_CNN_CORES={cfg['cnn_core']['count']}" in c
               for c in sources)
    # the two variants of the top: the Vitis kernel (Alveo) is compiled with VF_VITIS_KERNEL, the Vivado IP without
    vitis = board_build.variant(cfg) == "vitis"
    assert vitis == (board_build.flow(cfg) == "alveo")
    assert all(("-DVF_VITIS_KERNEL=1" in c) == vitis for c in sources)
    steps = [c.split()[0] for c in calls if c.split()[0] in ("csim_design", "csynth_design", "cosim_design",
                                                             "export_design")]
    assert steps == ["csim_design", "csynth_design", "cosim_design", "export_design"]
    export = next(c for c in calls if c.startswith("export_design"))
    if board_build.flow(cfg) == "alveo":
        assert "-format xo" in export and export.endswith(f"{k['top']}.xo")
        assert "flow_target vitis" in next(c for c in calls if c.startswith("open_solution"))
    else:
        vendor, library, name, version = cfg[k["section"]]["vlnv"].split(":")
        assert (f"-vendor {vendor} -library {library} -version {version} -ipname {name}") in export


@needs_tclsh
def test_hls_tcl_refuses_an_unknown_kernel_or_step(tmp_path):
    params = write(tmp_path, "params.tcl", board_build.hls_tcl(overlay.load("zcu104")))
    script = os.path.join(ROOT, "hls", "tcl", "vfpga_hls.tcl")
    r, _ = run_tcl(script, [params, "lstm", "csynth", tmp_path], tmp_path)
    assert r.returncode == 2 and "unknown kernel 'lstm'" in r.stderr
    r, _ = run_tcl(script, [params, "dispatcher", "synth", tmp_path], tmp_path)
    assert r.returncode == 2 and "unknown step 'synth'" in r.stderr


@needs_tclsh
@pytest.mark.parametrize("board", ["pynq_z2", "ultra96v2", "zcu104"])
def test_block_design_tcl_wires_ps_dispatcher_memory_and_interrupt(board, tmp_path):
    cfg = overlay.load(board)
    params = write(tmp_path, "params.tcl", board_build.bd_tcl(cfg))
    impl, proj = tmp_path / "impl", tmp_path / "proj"
    hwh = proj / f"vfpga_{board}.gen" / "sources_1" / "bd" / "vfpga" / "hw_handoff"
    for d in (impl, hwh, tmp_path / "ip"):
        d.mkdir(parents=True)
    (impl / "vfpga_wrapper.bit").write_bytes(b"bit")
    (hwh / "vfpga.hwh").write_text("<hwh/>")
    out = tmp_path / "out"
    r, calls = run_tcl(os.path.join(ROOT, "overlay", "tcl", "vfpga_bd.tcl"),
                       [params, tmp_path / "ip", tmp_path / "build", out], tmp_path,
                       extra=f"set ::vf_impl {{{impl}}}\nset ::vf_proj {{{proj}}}")
    assert r.returncode == 0, r.stderr
    ps = "processing_system7" if board_build.flow(cfg) == "zynq" else "zynq_ultra_ps_e"
    assert any(c.startswith("create_bd_cell") and ps in c for c in calls)
    assert f"create_bd_cell -type ip -vlnv {cfg['dispatcher']['vlnv']} dispatcher" in calls
    assert any(c.startswith("create_project") and cfg["part"] in c for c in calls)
    nets = [c for c in calls if c.startswith("connect_bd")]
    assert [c for c in nets if "dispatcher/m_axi_bank" in c] == [
        f"connect_bd_intf_net dispatcher/m_axi_bank{b} mem_ic/S{b:02d}_AXI" for b in range(cfg["ddr"]["banks"])]
    assert any("dispatcher/irq" in c for c in nets)
    assert any("intc/irq" in c and ("IRQ_F2P" in c or "pl_ps_irq0" in c) for c in nets)
    assert any("cycle_counter/Q" in c and "dispatcher/clock" in c for c in nets)
    assert f"set_property offset 0x{cfg['dispatcher']['base_address']:X} SEG_dispatcher_Reg" in calls
    assert (out / f"vfpga_{board}.bit").read_bytes() == b"bit"
    assert (out / f"vfpga_{board}.hwh").exists()


def test_block_design_is_refused_for_alveo_and_vpp_for_zynq():
    with pytest.raises(board_build.BuildConfigError, match="v\\+\\+"):
        board_build.bd_tcl(overlay.load("u200"))
    with pytest.raises(board_build.BuildConfigError, match="block design"):
        board_build.vpp_cfg(overlay.load("zcu104"))


@pytest.mark.parametrize("board, sp", [
    ("u200", ["DDR[0]", "DDR[1]", "DDR[2]", "DDR[3]"]), ("u200_bigcore", ["DDR[0]", "DDR[1]", "DDR[2]", "DDR[3]"]),
    ("u50", ["HBM[0:7]", "HBM[8:15]", "HBM[16:23]", "HBM[24:31]"])])
def test_vpp_connectivity_from_the_config(board, sp):
    """One m_axi port per DDR bank (HBM group), each linked to its bank alone."""
    text = board_build.vpp_cfg(overlay.load(board))
    assert f"platform={overlay.load(board)['platform']}" in text
    assert "nk=vf_dispatcher_top:1:dispatcher" in text
    assert [line for line in text.splitlines() if line.startswith("sp=")] == [
        f"sp=dispatcher.m_axi_bank{b}:{res}" for b, res in enumerate(sp)]


def _top_pragmas(board: str, *defines: str) -> list[str]:
    """The HLS pragmas of the dispatcher top as the preprocessor leaves them for a board."""
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ not installed")
    flags = board_build.cflags(overlay.load(board)).split()
    r = subprocess.run([gxx, "-std=c++14", "-E", "-P", f"-I{os.path.join(ROOT, 'hls', 'include')}", *flags,
                        *defines, os.path.join(ROOT, "hls", "dispatcher_top.cpp")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return [" ".join(line.split()) for line in r.stdout.splitlines() if line.lstrip().startswith("#pragma HLS")]


@pytest.mark.parametrize("board", ["u200", "zcu104"])
def test_both_variants_of_the_dispatcher_top(board):
    """The Vivado IP has the irq line and the clock input (ap_none); the
    Vitis kernel has neither (v++ takes AXI interfaces only) and the
    XRT-managed ap_ctrl_chain protocol. Both: one m_axi bundle per bank."""
    cfg = overlay.load(board)
    for defines, vitis in (((), False), (("-DVF_VITIS_KERNEL=1",), True)):
        pragmas = _top_pragmas(board, *defines)
        ap_none = [p for p in pragmas if "ap_none" in p]
        if vitis:
            assert ap_none == [] and "#pragma HLS INTERFACE ap_ctrl_chain port=return bundle=control" in pragmas
        else:
            assert sorted(ap_none) == ["#pragma HLS INTERFACE ap_none port=clock",
                                       "#pragma HLS INTERFACE ap_none port=irq"]
        bundles = sorted(p.split("bundle=")[1].split()[0] for p in pragmas if "m_axi" in p)
        assert bundles == [f"bank{b}" for b in range(cfg["ddr"]["banks"])]


def _path_without(*tools):
    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep)
            if not any(os.path.exists(os.path.join(d, t)) for t in tools)]
    return os.pathsep.join(dirs + [os.path.dirname(sys.executable)])


@pytest.mark.parametrize("cmd, board, message", [
    (["make", "-C", "hls", "-f", "vitis.mk", "hls-synth"], "zcu104", "'vitis_hls' not found"),
    (["make", "-C", "overlay"], "pynq_z2", "'vivado' not found"),
    (["make", "-C", "overlay"], "u50", "'v++' not found"),
])
def test_make_targets_say_which_tool_is_missing(cmd, board, message):
    if shutil.which("make") is None:
        pytest.skip("make not installed")
    env = {**os.environ, "PATH": _path_without("vitis_hls", "vivado", "v++"), "PYTHON": sys.executable}
    r = subprocess.run(cmd + [f"BOARD={board}", f"PYTHON={sys.executable}"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and message in r.stdout + r.stderr


# ---------------------------------------------------------------- the overlay class


def test_overlay_helpers():
    assert board_of("/boards/vfpga_zcu104.bit") == "zcu104"
    with pytest.raises(OverlayError, match="not a vfpga overlay"):
        board_of("base.bit")
    cfg = overlay.load("zcu104")
    ip = {"dispatcher": {"type": cfg["dispatcher"]["vlnv"], "phys_addr": cfg["dispatcher"]["base_address"],
                         "addr_range": cfg["dispatcher"]["address_range"]}, "intc": {"type": "xilinx.com:ip:axi_intc:4.1"}}
    name, desc = find_dispatcher(ip, cfg)
    check_address_map(desc, cfg)
    with pytest.raises(OverlayError, match="config says"):
        check_address_map({**desc, "phys_addr": 0x43C00000}, cfg)
    with pytest.raises(OverlayError, match="found none"):
        find_dispatcher({"intc": ip["intc"]}, cfg)
    # Alveo: compute units are named after the kernel
    assert find_dispatcher({"vf_dispatcher_top_1": {"type": "vf_dispatcher_top"}}, overlay.load("u200"))[0] == \
        "vf_dispatcher_top_1"


def test_overlay_class_is_a_pynq_overlay_and_explains_a_missing_bitstream():
    import pynq

    assert issubclass(overlay.VfpgaOverlay, pynq.Overlay)
    with pytest.raises(OverlayError, match=r"make -C overlay BOARD=ultra96v2"):
        overlay.VfpgaOverlay(board="ultra96v2")
