"""`vfpga demo` and `vfpga info` from the command line entry point."""

from vfpga.runtime import cli
from vfpga.runtime.cli.demo import run_demo


def test_demo_matches_golden_and_onnxruntime():
    lines = []
    r = run_demo("u200", n_inputs=3, echo=lines.append)
    assert r.golden_exact == r.inputs == 3
    assert r.vs_ort.max_lsb <= 1
    assert r.modeled_cycles > 0
    text = "\n".join(lines)
    for word in ("conv1", "pool", "add", "gap", "fc", "modeled", "bit-exact", "onnxruntime"):
        assert word in text
    # two tenants shared the board through two live re-allocations, every result exact
    s = r.sharing
    assert s.correct == s.total > 0
    assert [len(x.after["vision"]) for x in s.reallocations] == [4, 4]
    assert s.reallocations[0].retargeted and not s.reallocations[1].retargeted  # a move needs no dynamic stage
    assert s.reallocations[1].after["vision"] == [12, 13, 14, 15]
    assert {n: len(t.cores) for n, t in s.stats.items()} == {"vision": 4, "flat": 8}
    assert all(t.requests == s.total // 2 and t.source == "modeled" for t in s.stats.values())
    assert "reallocate (vision: 8->4 cores, flat: 4->8 cores)" in text


def test_demo_on_a_board_with_other_geometry(capsys):
    assert cli.main(["demo", "--board", "pynq_z2", "--inputs", "2", "--no-headline"]) == 0
    assert "8x16 int8 MACs" in capsys.readouterr().out


def test_info_and_bad_board(capsys):
    assert cli.main(["info", "--board", "u200"]) == 0
    assert "16 CNN cores of 16x16" in capsys.readouterr().out
    assert cli.main(["info", "--board", "nope"]) == 2
    assert "unknown board 'nope'" in capsys.readouterr().err
