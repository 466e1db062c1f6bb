"""HF <-> megatron-core checkpoint conversion CLI (thin wrapper; the logic lives in
``megatron_nft.checkpoint.convert``, also installed as the ``nft-convert`` console script).

    python tools/convert_checkpoint.py hf-to-mcore --hf HF_DIR --out CKPT [--tp N --pp M]
    torchrun --nproc-per-node 4 tools/convert_checkpoint.py hf-to-mcore --hf HF_DIR --out CKPT --tp 2 --pp 2
    python tools/convert_checkpoint.py mcore-to-hf --mcore CKPT --out HF_DIR

Keep this module's top level free of heavy imports: megatron's dist_checkpointing starts a
``spawn`` helper process per rank, which re-imports the main module (torch alone costs seconds).
"""

import os
import sys


def main(argv=None) -> int:
    from megatron_nft.checkpoint.convert import main as _main

    return _main(argv)


if __name__ == "__main__":
    if __package__ in (None, ""):  # run as a script: make the repo importable
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
