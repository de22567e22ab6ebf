"""Build of shortcut_fast: the Python package and its kernels subpackage.

``kernels/`` installs as ``shortcut_fast.kernels`` (a top-level ``kernels``
name is taken on PyPI).
"""

from setuptools import setup

setup(
    name="shortcut_fast",
    version="0.1.0",
    description="A fast PyTorch runtime for shortcut models: one-step flow generation",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=["shortcut_fast", "shortcut_fast.kernels"],
    package_dir={"shortcut_fast": "shortcut_fast", "shortcut_fast.kernels": "kernels"},
    install_requires=[
        "torch>=2.4",
        "numpy",
        "safetensors",
        "tqdm",
        "Pillow",
        "scikit-learn",
    ],
    extras_require={"test": ["pytest", "hypothesis", "ruff"]},
    entry_points={"console_scripts": ["shortcut-fast=shortcut_fast.cli:main"]},
)
