"""The embedded tiny default: everything built offline, in minutes, on a 2-core CPU.

1. a tokenizer trained on the synthetic arithmetic task (``data/tokenizer.py``);
2. a randomly initialised Qwen2-shaped model (``model.tiny``: head_dim 32, GQA, QKV bias);
3. a short supervised warm start *through the same megatron policy* (RFT loss on a corpus
   whose answers are right or systematically wrong -- forgotten carries -- so the policy
   starts as a mixture with room to improve; see ``data/synthetic.py``).

The result is an ordinary HF directory (``output.dir/base_model``) that the rest of the
pipeline treats like any downloaded checkpoint. It is built once per ``output.dir``
(atomically: a temp dir renamed at the end) and reused on resume.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import time

import torch
import torch.distributed as dist

from megatron_nft.config import RecipeConfig
from megatron_nft.data.synthetic import tiny_problem_kwargs

BASE_DIR_NAME = "base_model"
MARKER = "nft_base.json"  # written last: a base_model without it is not finished


def _random_hf_model(cfg: RecipeConfig, out_dir: str, tokenizer) -> None:
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from megatron_nft.data.tokenizer import stop_token_ids

    t = cfg.model.tiny
    hf_cfg = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=t.hidden_size, intermediate_size=t.ffn_hidden_size,
        num_hidden_layers=t.num_layers, num_attention_heads=t.num_heads,
        num_key_value_heads=t.num_kv_heads, head_dim=t.head_dim, max_position_embeddings=256,
        rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=stop_token_ids(tokenizer)[0], pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(cfg.seed)
    model = Qwen2ForCausalLM(hf_cfg)
    model.generation_config = GenerationConfig(eos_token_id=stop_token_ids(tokenizer),
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def _sft_samples(cfg: RecipeConfig, tokenizer, n: int):
    from megatron_nft.data.prompts import render_prompt
    from megatron_nft.data.synthetic import make_sft_corpus
    from megatron_nft.data.tokenizer import stop_token_ids
    from megatron_nft.types import Sample

    t = cfg.model.tiny
    eos = stop_token_ids(tokenizer)[0]
    out = []
    for ex in make_sft_corpus(n, seed=cfg.seed, bug_rate=t.bug_rate, **tiny_problem_kwargs(cfg)):
        text = render_prompt(ex["prompt"], tokenizer, cfg.data.system_prompt or None)
        p = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        r = tokenizer.encode(ex["response"], add_special_tokens=False) + [eos]
        out.append(Sample(tokens=p + r, prompt_len=len(p), correct=True, reward=1.0, r_hat=1.0))
    return out


def build_tiny_base(cfg: RecipeConfig, log=print) -> str:
    """Collective (every rank calls it): returns the HF dir of the warm-started tiny model."""
    from transformers import AutoTokenizer

    from megatron_nft.checkpoint.common import atomic_dir
    from megatron_nft.data.synthetic import tokenizer_training_texts
    from megatron_nft.data.tokenizer import train_tiny_tokenizer

    final = os.path.join(cfg.output.dir, BASE_DIR_NAME)
    if _base_matches(final, cfg, log):
        return final
    rank = dist.get_rank()
    t0 = time.time()
    with atomic_dir(final) as tmp:
        if rank == 0:
            tok = train_tiny_tokenizer(tokenizer_training_texts(), cfg.model.tiny.vocab_size)
            _random_hf_model(cfg, str(tmp), tok)
        dist.barrier()
        _warm_start(cfg, str(tmp), AutoTokenizer.from_pretrained(str(tmp)), log)
        if rank == 0:
            t = cfg.model.tiny
            with open(os.path.join(tmp, MARKER), "w") as f:
                json.dump({"sft_steps": t.sft_steps, "bug_rate": t.bug_rate, "seconds": time.time() - t0,
                           "tiny": dataclasses.asdict(t)}, f)
    return final


def _base_matches(final: str, cfg: RecipeConfig, log) -> bool:
    """A built base model for this ``model.tiny`` (a changed size or SFT setting rebuilds it;
    markers of older builds, without the settings, are trusted)."""
    marker = os.path.join(final, MARKER)
    if not os.path.isfile(marker):
        return False
    with open(marker) as f:
        built = json.load(f).get("tiny")
    if built is None or built == dataclasses.asdict(cfg.model.tiny):
        return True
    log(f"[nft] {final} was built for other model.tiny settings; rebuilding it")
    return False


def _warm_start(cfg: RecipeConfig, model_dir: str, tokenizer, log) -> None:
    """Supervised warm start through the megatron policy (RFT loss = likelihood on the
    corpus); the trained weights replace ``model_dir``'s safetensors."""
    from megatron_nft.megatron.policy import MegatronPolicy

    with open(os.path.join(model_dir, "config.json")) as f:
        hf_config = json.load(f)
    t = cfg.model.tiny
    sft_cfg = copy.deepcopy(cfg)
    sft_cfg.algorithm.name = "rft"
    sft_cfg.algorithm.aggregation = "token-mean"
    sft_cfg.train.lr, sft_cfg.train.warmup_steps, sft_cfg.train.lr_schedule = t.sft_lr, 10, "cosine"
    sft_cfg.train.min_lr = t.sft_lr * 0.1
    sft_cfg.train.weight_decay = 0.0
    policy = MegatronPolicy(sft_cfg, hf_config, total_updates=t.sft_steps)
    policy.load_weights(model_dir)
    samples = _sft_samples(cfg, tokenizer, t.sft_steps * t.sft_batch)
    for step in range(t.sft_steps):
        m = policy.train_step(samples[step * t.sft_batch:(step + 1) * t.sft_batch])
        if dist.get_rank() == 0 and (step % 50 == 0 or step == t.sft_steps - 1):
            log(f"[warm start] step {step + 1}/{t.sft_steps}  loss {m['train/loss']:.4f}  "
                f"lr {m['train/lr']:.2e}")
    sft = os.path.join(model_dir, "sft")
    policy.export_hf_dir(sft, model_dir)
    if dist.get_rank() == 0:
        for name in os.listdir(sft):
            os.replace(os.path.join(sft, name), os.path.join(model_dir, name))
        os.rmdir(sft)
    dist.barrier()
