"""tf_instcls: full instance classification for unsupervised representation learning."""

import re

from setuptools import find_packages, setup


def _version() -> str:
    """The one version, tf_instcls.__version__ (read, not imported: no TF at build)."""
    with open("tf_instcls/__init__.py", encoding="utf-8") as f:
        return re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)


setup(
    name="tf_instcls",
    version=_version(),
    license="Apache-2.0",
    license_files=["LICENSE"],
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Intended Audience :: Science/Research",
        "License :: OSI Approved :: Apache Software License",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
    keywords="self-supervised learning, instance discrimination, tensorflow, dtensor",
    description=(
        "One-million-way instance classification (Liu et al., AAAI 2021) and NPID on "
        "TensorFlow DTensor"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    # The gin configs ship inside the package (tf_instcls/gin in the wheel), so the
    # installed binaries (tf_instcls.cli) find them (cli/gin_config.py: GIN_DIR); in a
    # checkout they are gin/. tools/ (thin scripts over tf_instcls.cli) and benchmarks/
    # are not shipped.
    packages=find_packages(include=["tf_instcls", "tf_instcls.*"])
    + ["tf_instcls.gin", "tf_instcls.gin.ablations"],
    package_dir={"tf_instcls.gin": "gin"},
    package_data={"tf_instcls.gin": ["*.gin"], "tf_instcls.gin.ablations": ["*.gin"]},
    python_requires=">=3.10,<3.13",
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "keras>=3.10",  # tf.keras is Keras 3; declared, not left to TensorFlow's pins
        "tensorflow-datasets>=4.9",
        "absl-py>=2.0",
        "gin-config>=0.5",
        "numpy>=1.26",
        "scikit-learn>=1.3",  # the embedded digits dataset
        "matplotlib>=3.7",
        "tensorboard>=2.20",  # tf.summary needs it; TF 2.21 does not pull it in
    ],
    entry_points={"console_scripts": [
        "tf-instcls-train=tf_instcls.cli.train:run",
        "tf-instcls-export=tf_instcls.cli.export:run",
        "tf-instcls-embed=tf_instcls.cli.embed:run",
        "tf-instcls-eval-knn=tf_instcls.cli.eval_knn:run",
        "tf-instcls-eval-linear=tf_instcls.cli.eval_linear:run",
        "tf-instcls-finetune=tf_instcls.cli.finetune:run",
        "tf-instcls-analyze=tf_instcls.cli.analyze:run",
        "tf-instcls-results-table=tf_instcls.cli.results_table:run",
        "tf-instcls-similarity-stats=tf_instcls.cli.similarity_stats:run",
    ]},
    extras_require={
        "test": ["pytest>=8", "ruff>=0.6", "setuptools>=64"],  # setuptools: the wheel test
        "bench": ["faiss-cpu>=1.8"],  # benchmarks/bench_mining.py compares against faiss
        "gpu": ["tensorflow[and-cuda]>=2.21,<2.22"],
    },
)
