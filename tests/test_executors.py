"""The launch description and the CPU executor's build, cache and type checks."""

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

import cudcn
from cudcn import _gpu_build, _kernels, _launch, _sources
from cudcn._executors import cpu

IM2COL = _kernels.DEFORM_CONV2D_IM2COL


def _im2col_values(dtype=np.float32):
    z = np.zeros((1, 4, 5, 5), dtype)
    geometry = dict(channels=4, height=5, width=5, kernel_h=1, kernel_w=1, stride_h=1,
                    stride_w=1, pad_h=0, pad_w=0, dil_h=1, dil_w=1, offset_groups=1, out_h=5,
                    out_w=5)
    return dict(input=z, offset=np.zeros((1, 2, 5, 5), dtype), mask=np.zeros((1, 2, 5, 5), dtype),
                columns=np.zeros((1, 4, 25), dtype), use_mask=0, channel_block=4, **geometry)


def test_scalars_get_the_exact_c_type_of_the_signature():
    launch = _launch.make_launch(IM2COL, np.float32, 25, "int", **_im2col_values())
    by_name = dict(zip(IM2COL.param_names, launch.args))
    assert type(by_name["n"]) is np.int32 and type(by_name["channels"]) is np.int32
    launch64 = _launch.make_launch(IM2COL, np.float32, 25, "long long", **_im2col_values())
    assert type(dict(zip(IM2COL.param_names, launch64.args))["n"]) is np.int64
    assert (launch.grid, launch.block) == (1, 32)


@pytest.mark.parametrize("n, grid, block", [(1, 1, 32), (128, 1, 128), (300, 2, 160),
                                             (56448, 221, 256), (256 * 5 + 1, 6, 224)])
def test_blocks_cover_the_items_with_less_than_a_warp_idle(n, grid, block):
    assert _launch.grid_and_block(n) == (grid, block)
    assert 0 <= grid * block - n < 32 * grid


def test_grid_is_capped_and_covers_the_work_by_striding():
    launch = _launch.make_launch(IM2COL, np.float32, 2**31 - 1, "int", **_im2col_values())
    assert launch.grid == _launch.MAX_GRID


def _read_only(array):
    array.flags.writeable = False
    return array


@pytest.mark.parametrize("change, error, words", [
    (dict(channels=2**31), ValueError, ["channels", "int"]),
    (dict(channels=4.0), TypeError, ["channels", "integer"]),
    (dict(columns=np.zeros((1, 4, 25), np.float64)), TypeError, ["columns", "float32"]),
    (dict(columns=np.zeros((1, 25, 4), np.float32).T), ValueError, ["columns", "contiguous"]),
    (dict(use_mask=None), TypeError, ["use_mask"]),
    (dict(use_mask=True), TypeError, ["use_mask", "integer"]),
    (dict(channels=-2**31 - 1), ValueError, ["channels", "int"]),
    (dict(columns=_read_only(np.zeros((1, 4, 25), np.float32))), ValueError,
     ["columns", "writeable"]),
    (dict(input=np.zeros((1, 4, 5, 10), np.float32)[..., ::2]), ValueError,
     ["input", "contiguous"]),
    (dict(offset=[0.0] * 50), TypeError, ["offset", "array"]),
    (dict(stride_h=2**31 - 1 + True), ValueError, ["stride_h", "int"]),
])
def test_launch_rejects_wrong_argument_types(change, error, words):
    with pytest.raises(error) as info:
        _launch.make_launch(IM2COL, np.float32, 25, "int", **dict(_im2col_values(), **change))
    for word in words:
        assert word in str(info.value)


def test_launch_takes_read_only_inputs_and_numpy_integers():
    values = dict(_im2col_values(), input=_read_only(np.ones((1, 4, 5, 5), np.float32)),
                  channels=np.int64(4), out_w=np.uint8(5))
    launch = _launch.make_launch(IM2COL, np.float32, np.int16(25), "int", **values)
    by_name = dict(zip(IM2COL.param_names, launch.args))
    assert by_name["input"] is values["input"]
    assert [(type(by_name[k]), by_name[k]) for k in ("channels", "out_w", "n")] == [
        (np.int32, 4), (np.int32, 5), (np.int32, 25)]
    _launch.run(launch)
    np.testing.assert_array_equal(values["columns"], 1)


def test_launch_rejects_missing_arguments():
    values = _im2col_values()
    del values["out_w"]
    with pytest.raises(TypeError, match="out_w"):
        _launch.make_launch(IM2COL, np.float32, 25, "int", **values)


def test_cpu_executor_runs_a_launch_directly():
    values = _im2col_values(np.float64)
    values["input"] = np.arange(100, dtype=np.float64).reshape(1, 4, 5, 5)
    _launch.run(_launch.make_launch(IM2COL, np.float64, 25, "int", **values))
    np.testing.assert_array_equal(values["columns"], values["input"].reshape(1, 4, 25))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDCN_CACHE_DIR", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("param, wrong", [("input", "T*"), ("channels", "long long"),
                                          ("n", "int")])
def test_signature_table_that_disagrees_with_the_kernel_fails_to_build(cache, monkeypatch,
                                                                       param, wrong):
    params = tuple((n, wrong if n == param else t) for n, t in IM2COL.params)
    broken = dataclasses.replace(IM2COL, params=params)
    monkeypatch.setattr(_kernels, "KERNELS", (broken,) + _kernels.KERNELS[1:])
    with pytest.raises(cpu.CompileError, match="deform_conv2d_im2col"):
        cpu._build("deform_conv2d.cu", cpu.compiler(), cpu.CXXFLAGS)


def test_builds_are_cached_by_sources_flags_and_compiler(cache, monkeypatch):
    first = cpu._build("deform_conv2d.cu", cpu.compiler(), cpu.CXXFLAGS)
    mtime = first.stat().st_mtime_ns
    assert cpu._build("deform_conv2d.cu", cpu.compiler(), cpu.CXXFLAGS) == first
    assert first.stat().st_mtime_ns == mtime
    assert first.parent == cache / "cpu"
    monkeypatch.setattr(_sources, "sources_digest", lambda: "a header changed")
    assert cpu._build("deform_conv2d.cu", cpu.compiler(), cpu.CXXFLAGS) != first


def test_kernels_are_built_for_the_host_cpu():
    assert cpu.library("deform_conv2d.cu").build_flags == cpu.FLAG_SETS[0]
    assert "-march=native" in cpu.FLAG_SETS[0]


def test_builds_are_cached_by_the_target_instruction_set(cache, monkeypatch):
    """A cache directory shared by machines of different CPUs (an NFS home)
    must not hand one the other's -march=native library."""
    first = cpu._build("segmented_sum.cu", cpu.compiler(), cpu.FLAG_SETS[0])
    monkeypatch.setattr(cpu, "_target_macros", lambda command, flags: "#define __AVX512F__ 1")
    assert cpu._build("segmented_sum.cu", cpu.compiler(), cpu.FLAG_SETS[0]) != first


def test_the_native_vector_instruction_set_is_the_widest_the_compiler_targets(monkeypatch):
    def macros(*names):
        return lambda command, flags: "".join(f"#define {n} 1\n" for n in names)

    monkeypatch.setattr(cpu, "_target_macros",
                        macros("__cplusplus", "__SSE2__", "__AVX__", "__AVX2__", "__AVX512F__"))
    assert cpu.native_vector_isa(["c++"]) == "AVX-512"
    monkeypatch.setattr(cpu, "_target_macros", macros("__cplusplus", "__ARM_NEON"))
    assert cpu.native_vector_isa(["c++"]) == "NEON"
    monkeypatch.setattr(cpu, "_target_macros",
                        lambda command, flags: "c++: error: unrecognized -march=native")
    assert cpu.native_vector_isa(["c++"]) is None
    monkeypatch.undo()
    assert cpu.native_vector_isa(cpu.compiler()) in {name for _, name in cpu._VECTOR_ISAS}


def test_a_flag_set_the_compiler_refuses_falls_back_to_the_next(cache, monkeypatch):
    refused = cpu.CXXFLAGS + cpu.OPENMP_FLAGS + ("-march=no-such-cpu",)
    monkeypatch.setattr(cpu, "FLAG_SETS", (refused,) + cpu.FLAG_SETS[1:])
    lib = cpu.library.__wrapped__("segmented_sum.cu")
    assert lib.build_flags == cpu.CXXFLAGS + cpu.OPENMP_FLAGS
    monkeypatch.setattr(cpu, "FLAG_SETS", (refused,))
    with pytest.raises(cpu.CompileError, match="no-such-cpu"):
        cpu.library.__wrapped__("segmented_sum.cu")


def test_missing_compiler_says_what_to_install(monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    with pytest.raises(cudcn.CompilerNotFoundError) as info:
        cpu.compiler()
    message = str(info.value)
    assert "/nonexistent/c++" in message and "install" in message and "CXX" in message


def test_nothing_is_compiled_at_import(tmp_path):
    import subprocess
    import sys

    code = ("import cudcn, cudcn._executors.cpu as c; "
            "assert c.library.cache_info().currsize == 0; import sys; "
            "assert 'cupy' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True,
                   env={"CUDCN_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert not any(tmp_path.iterdir())


def test_gpu_source_carries_the_digest_of_every_kernel_file():
    text = _gpu_build.source_text("deform_conv2d.cu")
    assert text.splitlines()[0] == f"// cudcn kernel sources {_sources.sources_digest()}"
    names = _gpu_build.name_expressions("deform_conv2d.cu")
    assert len(names) == len(_kernels.kernels_in("deform_conv2d.cu")) * 4 * 2
    assert "cudcn::deform_conv2d_col2im<__nv_bfloat16, long long>" in names
    assert f"-I{_sources.kernel_dir()}" in _gpu_build.options()


@pytest.mark.parametrize("source, pattern, name", [
    ("deform_conv2d.cu", r"constexpr int kCoordBlock = (\d+);", "COORD_BLOCK"),
    ("deform_conv2d.cu", r"constexpr int kPixelChannels = (\d+);", "PIXEL_CHANNELS"),
    ("deform_conv2d.cu", r"constexpr int kOutputTile = (\d+);", "OUTPUT_TILE"),
    ("deform_conv2d.cu", r"p.width = I\(s.width\) \+ (\d+);", "PLANE_PADDING"),
    ("deform_roi_pool.cu", r"constexpr int kPixelChannels = (\d+);", "ROI_PIXEL_CHANNELS"),
    ("deform_roi_pool.cu", r"constexpr int kRoIChannels = (\d+);", "ROI_CHANNELS"),
    ("point_sampling.cuh", r"constexpr int kLanes = (\d+);", "SAMPLING_LANES"),
])
def test_kernel_constants_match_the_python_ones(source, pattern, name):
    import re

    (value,) = re.findall(pattern, (_sources.kernel_dir() / source).read_text())
    assert int(value) == getattr(_kernels, name)


@pytest.mark.parametrize("with_torch", [False, True], ids=["alone", "torch-imported"])
def test_kernels_join_torchs_openmp_threads_when_torch_is_loaded(with_torch):
    """torch's CPU ops run on OpenMP threads that spin after each op; cudcn
    launches on the same threads where torch is in the process, on its own
    pool elsewhere. Either way the results are the same bits."""
    if with_torch:
        pytest.importorskip("torch")
    code = ("import sys, hashlib, numpy as np\n"
            + ("import torch\n" if with_torch else "")
            + "import cudcn\nfrom cudcn._executors import cpu\n"
            "from cudcn.testing import deform_conv2d_inputs\n"
            "a = deform_conv2d_inputs(batch=3, in_channels=8, size=(9, 8), seed=3)\n"
            "g = cudcn.deform_conv2d_backward(cudcn.deform_conv2d(**a), deterministic=True, **a)\n"
            "print(cpu.library('deform_conv2d.cu').cudcn_uses_openmp(),"
            " hashlib.sha256(b''.join(x.tobytes() for x in g if x is not None)).hexdigest())\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    uses_openmp, digest = result.stdout.split()
    assert uses_openmp == str(int(with_torch))
    _DIGESTS.setdefault("digest", digest)
    assert digest == _DIGESTS["digest"]


_DIGESTS = {}


def test_every_kernel_loops_over_its_n_items():
    """The CPU executor runs only the first n of a launch's threads (the rest
    would idle, and would leave a small launch on one worker): that holds
    while every kernel is one grid-stride loop over its argument n and reads
    no thread or block index itself."""
    import re

    for source in _kernels.sources():
        text = (_sources.kernel_dir() / source).read_text()
        kernels = re.findall(r"__global__ void (\w+)\(", text)
        loops = re.findall(r"CUDCN_KERNEL_LOOP\(\w+, I, n\)", text)
        assert len(loops) == len(kernels) == len(_kernels.kernels_in(source)), source
        assert not re.search(r"\b(threadIdx|blockIdx|blockDim|gridDim)\b", text), source
    for kernel in _kernels.KERNELS:
        assert dict(kernel.params)["n"] == "I", kernel.name
