"""Reference models for benchmarks/gpu_step_bench.py: HF transformers' Qwen2 when importable,
else ``RefQwen2``, a plain-torch Qwen2 (GQA, QKV bias, RMSNorm, RoPE, SwiGLU) written here so a
GPU box without transformers can still check and time against an independent model."""
import functools
import importlib.util
import os
import sys


def have(mod: str) -> bool:
    return importlib.util.find_spec(mod) is not None


# ------------------------------------------------------------------ plain-torch Qwen2 reference
def _ref_classes():
    import torch
    import torch.nn.functional as F
    from torch import nn

    class RMSNorm(nn.Module):
        def __init__(self, n, eps):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(n))
            self.eps = eps

        def forward(self, x):  # HF Qwen2RMSNorm: normalise in fp32, scale in the input dtype
            dt = x.dtype
            x = x.float()
            x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
            return self.weight * x.to(dt)

    class Layer(nn.Module):
        def __init__(self, c):
            super().__init__()
            h, d = c["hidden_size"], c["head_dim"]
            nq, nkv, f = c["num_attention_heads"], c["num_key_value_heads"], c["intermediate_size"]
            self.nq, self.nkv, self.d = nq, nkv, d
            self.input_layernorm = RMSNorm(h, c["rms_norm_eps"])
            self.post_attention_layernorm = RMSNorm(h, c["rms_norm_eps"])
            self.self_attn = nn.Module()
            self.self_attn.q_proj = nn.Linear(h, nq * d, bias=True)
            self.self_attn.k_proj = nn.Linear(h, nkv * d, bias=True)
            self.self_attn.v_proj = nn.Linear(h, nkv * d, bias=True)
            self.self_attn.o_proj = nn.Linear(nq * d, h, bias=False)
            self.mlp = nn.Module()
            self.mlp.gate_proj = nn.Linear(h, f, bias=False)
            self.mlp.up_proj = nn.Linear(h, f, bias=False)
            self.mlp.down_proj = nn.Linear(f, h, bias=False)

        def forward(self, x, cos, sin):
            b, s, _ = x.shape
            a = self.self_attn
            h = self.input_layernorm(x)
            q = a.q_proj(h).view(b, s, self.nq, self.d).transpose(1, 2)
            k = a.k_proj(h).view(b, s, self.nkv, self.d).transpose(1, 2)
            v = a.v_proj(h).view(b, s, self.nkv, self.d).transpose(1, 2)

            def rope(t):  # HF rotate_half convention (= megatron's non-interleaved rope)
                t1, t2 = t[..., : self.d // 2], t[..., self.d // 2:]
                return t * cos + torch.cat((-t2, t1), -1) * sin

            q, k = rope(q), rope(k)
            if self.nq != self.nkv:
                k = k.repeat_interleave(self.nq // self.nkv, dim=1)
                v = v.repeat_interleave(self.nq // self.nkv, dim=1)
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + a.o_proj(o.transpose(1, 2).reshape(b, s, self.nq * self.d))
            h = self.post_attention_layernorm(x)
            m = self.mlp
            return x + m.down_proj(F.silu(m.gate_proj(h)) * m.up_proj(h))

    class RefQwen2(nn.Module):
        """Plain-torch Qwen2 with HF parameter names (``model.layers.0.self_attn.q_proj.weight``
        ...); ``forward(ids) -> final hidden states``; ``lm_weight()`` the output matrix."""

        def __init__(self, c):
            super().__init__()
            self.c = c
            self.model = nn.Module()
            self.model.embed_tokens = nn.Embedding(c["vocab_size"], c["hidden_size"])
            self.model.layers = nn.ModuleList(Layer(c) for _ in range(c["num_hidden_layers"]))
            self.model.norm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
            if not c["tie_word_embeddings"]:
                self.lm_head = nn.Linear(c["hidden_size"], c["vocab_size"], bias=False)

        def lm_weight(self):
            return self.model.embed_tokens.weight if self.c["tie_word_embeddings"] else self.lm_head.weight

        def forward(self, ids):
            d, s = self.c["head_dim"], ids.shape[1]
            x = self.model.embed_tokens(ids)
            inv = 1.0 / (self.c["rope_theta"] ** (torch.arange(0, d, 2, device=ids.device,
                                                               dtype=torch.float32) / d))
            fr = torch.outer(torch.arange(s, device=ids.device, dtype=torch.float32), inv)
            emb = torch.cat((fr, fr), -1)
            cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
            for layer in self.model.layers:
                x = layer(x, cos, sin)
            return self.model.norm(x)

    return RefQwen2


def build_reference(kind: str, cfg: dict, device, dtype):
    """``(module, hidden_fn(ids) -> [b, s, H], lm_weight_fn())`` for kind ``hf`` or ``ref``."""
    import torch

    if kind == "hf":
        import transformers

        c = transformers.Qwen2Config(**{k: v for k, v in cfg.items() if k != "architectures"})
        def make():
            try:
                return transformers.AutoModelForCausalLM.from_config(c, attn_implementation="sdpa")
            except TypeError:  # very old transformers
                c._attn_implementation = "sdpa"
                return transformers.AutoModelForCausalLM.from_config(c)

        try:
            with torch.device(device):  # initialise on the GPU (seconds, not minutes on CPU)
                m = make()
        except torch.OutOfMemoryError:
            raise
        except Exception as e:  # noqa: BLE001
            print(f"HF build under torch.device({device}) failed ({e}); building on CPU",
                  file=sys.stderr)
            m = make()
        m = m.to(device=device, dtype=dtype)
        attn = getattr(m.config, "_attn_implementation", "?")
        if attn != "sdpa":
            print(f"warning: HF attention implementation is {attn!r}, not 'sdpa'", file=sys.stderr)
        m.config.use_cache = False

        def hidden(ids):
            return m.model(input_ids=ids, use_cache=False).last_hidden_state

        return m, hidden, lambda: m.get_output_embeddings().weight
    with torch.device(device):
        m = _ref_classes()(cfg)
    m = m.to(device=device, dtype=dtype)
    return m, m.forward, m.lm_weight


def build_reference_or_fallback(kind: str, cfg: dict, device, dtype):
    """:func:`build_reference`, except that an HF build that fails for a reason other than
    memory (a transformers version we never ran) falls back to RefQwen2 -- loudly -- instead of
    losing the row. Returns ``(kind_used, module, hidden_fn, lm_weight_fn)``."""
    import torch

    if kind == "hf":
        try:
            return ("hf",) + build_reference("hf", cfg, device, dtype)
        except torch.OutOfMemoryError:
            raise
        except Exception as e:  # noqa: BLE001
            print(f"WARNING: building HF transformers' Qwen2 failed ({type(e).__name__}: "
                  f"{str(e)[:300]}); falling back to RefQwen2 (plain torch)", file=sys.stderr,
                  flush=True)
            kind = f"ref (HF build failed: {type(e).__name__})"
        import gc  # after the except block: the traceback no longer holds the failed model

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return (kind,) + build_reference("ref", cfg, device, dtype)


@functools.lru_cache(maxsize=None)
def transformers_problem() -> str:
    """'' if transformers' Qwen2 is usable here, else why not. A real import, not find_spec: a
    transformers whose own dependencies (huggingface_hub, tokenizers, ...) are missing or too old
    is found by find_spec but fails on import -- that must not crash every HF worker."""
    if not have("transformers"):
        return "transformers is not installed"
    try:
        import transformers

        transformers.Qwen2Config, transformers.AutoModelForCausalLM  # noqa: B018 (lazy attrs)
    except Exception as e:  # noqa: BLE001
        return f"`import transformers` fails here ({type(e).__name__}: {str(e)[:200]})"
    return ""


def reference_kind() -> str:
    """``hf`` (transformers usable) or ``ref``; env NFT_BENCH_REFERENCE forces one."""
    forced = os.environ.get("NFT_BENCH_REFERENCE")
    if forced in ("hf", "ref"):
        return forced
    return "ref" if transformers_problem() else "hf"
