"""megatron-nft: Negative-aware Fine-Tuning (NFT) on megatron-core, from a 2-core CPU to Slurm clusters."""
from setuptools import find_packages, setup

setup(
    name="megatron-nft",
    version="0.1.0",
    description="NFT (Negative-aware Fine-Tuning) training recipe on megatron-core with vLLM rollouts",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["megatron_nft", "megatron_nft.*", "tools", "tools.*"]),
    # torch is unpinned on purpose: clusters bring their own CUDA build (NGC containers);
    # requirements-cpu.txt pins the CPU wheel for development machines.
    install_requires=[
        "torch",
        # upper bound: the newest release checked against this code (CPU CI runs 0.16.1 and 0.19.2)
        "megatron-core>=0.16,<0.20",
        "pyyaml",
        "sympy",
        "math-verify",
        "safetensors",
        "transformers",
        "tokenizers",
        "tensorboard",
        "numpy",
        "psutil",  # megatron-core dist_checkpointing needs it (hangs without)
        "tqdm",
        "matplotlib",
        "pyarrow",  # parquet prompt files (DAPO-Math-17k)
    ],
    extras_require={
        # GPU clusters: the pinned set of requirements-gpu.txt (tests/test_gpu_pins.py keeps the two
        # equal); Transformer Engine is built separately (requirements-gpu-te.txt, --no-build-isolation).
        "gpu": ["vllm==0.33.0", "torch==2.14.0", "megatron-core==0.19.2", "transformers==5.20.2"],
        "test": ["pytest"],
        "wandb": ["wandb"],  # output.wandb: true (offline runs under output.dir/wandb)
    },
    entry_points={
        "console_scripts": [
            "nft-train=megatron_nft.train:main",
            "nft-convert=megatron_nft.checkpoint.convert:main",
            "nft-logprobs=tools.logprobs:main",
            "nft-eval=tools.eval:main",
            "nft-prepare-data=tools.prepare_data:main",
        ]
    },
)
