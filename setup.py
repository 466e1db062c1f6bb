"""megatron-nft: Negative-aware Fine-Tuning (NFT) on megatron-core, from a 2-core CPU to Slurm clusters."""
from setuptools import find_packages, setup

setup(
    name="megatron-nft",
    version="0.1.0",
    description="NFT (Negative-aware Fine-Tuning) training recipe on megatron-core with vLLM rollouts",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["megatron_nft", "megatron_nft.*", "tools", "tools.*"]),
    # torch is unpinned on purpose: clusters bring their own CUDA build (NGC containers);
    # requirements-cpu.txt pins the CPU wheel for development machines.
    install_requires=[
        "torch",
        "megatron-core>=0.16",
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
        # GPU clusters: vLLM rollouts; Transformer Engine / apex come with NGC containers.
        "gpu": ["vllm"],
        "test": ["pytest"],
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
