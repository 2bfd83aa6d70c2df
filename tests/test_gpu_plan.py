"""`cudcn gpu-plan`: the GPU path's launches, as the launch description plans
them for an A100 and an H100, fill the device at the asv shapes.

The targets (issue 16): every launch but a small precomputation or final
reduction has at least min(2 waves, the peer's threads for that work); no
thread loops more than 32 times; the default path's kernels use at most 64
registers on sm_80 and sm_90.
"""

import subprocess
import sys

import pytest

from cudcn import _kernels, _launch
from cudcn.cli import gpu_plan

pytest.importorskip("cudcn._nvrtc")
ARCHS = ("sm_80", "sm_90")
OPS = {"deform_conv2d", "deform_roi_pool", "deform_psroi_pool", "ms_deform_attn", "dcnv3"}
# The CPU's own kernels, never launched on a GPU (the 'planes' strategy).
CPU_ONLY = {k.name.rsplit("::", 1)[-1] for k in _kernels.KERNELS
            if k.name.endswith("_planes") or k.name.endswith("_corners")}


@pytest.fixture(scope="module", params=ARCHS)
def rows(request):
    return gpu_plan.plan(gpu_plan.reference_target(request.param))


def test_every_op_and_mode_is_planned_at_every_shape(rows):
    planned = {(r.op, r.shape, r.mode) for r in rows}
    assert {op for op, _, _ in planned} == OPS
    assert len({s for op, s, _ in planned if op == "deform_conv2d"}) == len(gpu_plan.CONV_SHAPES)
    assert {mode for _, _, mode in planned} == {"default", "deterministic"}
    assert not {r.kernel for r in rows} & CPU_ONLY


def test_every_main_launch_fills_the_device(rows):
    short = [(r.op, r.shape, r.mode, r.kernel, r.threads, r.wanted_threads)
             for r in rows if not r.auxiliary and r.threads < r.wanted_threads]
    assert not short
    # The claim is not vacuous: the main launches are many and know their peer.
    main = [r for r in rows if not r.auxiliary]
    assert len(main) > 40 and all(r.peer_threads > 0 and r.threads > 0 for r in main)


def test_no_thread_loops_more_than_32_times(rows):
    assert max(r.serial for r in rows) <= _launch.MAX_SERIAL
    assert all(r.serial > 0 for r in rows)


def test_auxiliary_launches_are_small(rows):
    """Not held to the thread target, they must be a small part of their op's traffic."""
    shares = gpu_plan.auxiliary_share(rows)
    assert max(shares.values()) <= 0.05


def test_default_path_registers_are_at_most_64(rows):
    assert max(r.registers for r in rows if r.mode == "default") <= 64


def test_the_deterministic_path_sorts_instead_of_scattering_with_atomics(rows):
    deterministic = {r.kernel for r in rows if r.mode == "deterministic"}
    default = {r.kernel for r in rows if r.mode == "default"}
    atomic = {"deform_conv2d_col2im", "deform_roi_pool_backward_input",
              "deform_psroi_pool_backward_input"}
    assert atomic <= default and not atomic & deterministic
    assert {"segmented_sum_chunks", "segmented_sum_segments"} <= deterministic


def test_a_launch_short_of_its_target_is_reported_and_fails_the_command(monkeypatch, capsys):
    """One thread per item, all channels in a loop (the mapping before issue 16)."""
    monkeypatch.setattr(_launch, "_force_channel_block", 256)
    from cudcn import cli

    assert cli.main(["gpu-plan", "--arch", "sm_90", "--shape", "4,256,14"]) == 1
    out = capsys.readouterr().out
    assert "UNDER" in out and "deform_conv2d_im2col" in out


def test_help_and_bad_shape():
    ok = subprocess.run([sys.executable, "-m", "cudcn", "gpu-plan", "--help"],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "--arch" in ok.stdout and "H100" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "cudcn", "gpu-plan", "--shape", "4,256"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "N,C,S" in bad.stderr
