"""Rollout engine on HF transformers ``generate`` — the light default (CPU, debugging).

Loads ``AutoModelForCausalLM`` from an HF directory (fp32 on CPU, bf16 on GPU), generates with
left-padded batches (``n`` copies of each prompt), and returns per-token log-probs under the RAW
model distribution (``log_softmax`` of the un-warped logits at the sampled tokens, see
:mod:`megatron_nft.rollout.base`). Sampling uses exactly temperature / top-p (top-k, repetition
penalty and any other defaults from the checkpoint's ``generation_config.json`` are switched off).
"""
from __future__ import annotations

import logging
from typing import Iterable

import torch

from megatron_nft.rollout.base import Completion, RolloutEngine, SamplingConfig

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
# Buffers the model computes itself; an exporter may or may not send them.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def _as_list(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None`` → fp32 on CPU, bf16 on GPU; strings like ``"bf16"``/``"float32"`` accepted."""
    if dtype is None:
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


class HFEngine(RolloutEngine):
    """``RolloutEngine`` on ``model.generate``.

    Args:
        hf_dir: HF model directory (config.json + weights; tokenizer optional, only for ``text``).
        seed: base seed; a call without ``SamplingConfig.seed`` uses ``seed + call_index``.
        dtype: model dtype (default fp32 on CPU, bf16 on GPU).
        device: default ``cuda`` when available, else ``cpu``.
        max_batch_sequences: at most this many sequences (prompts × n) per ``generate`` call.
        logits_budget_bytes: cap on the fp32 raw logits kept for log-probs per chunk
            (sequences × max_tokens × vocab × 4 bytes); the chunk size shrinks to fit.
        eos_token_id: override the end-of-sequence id(s) (default: generation_config, then
            config, then tokenizer).
    """

    def __init__(
        self,
        hf_dir: str,
        *,
        seed: int = 0,
        dtype: str | torch.dtype | None = None,
        device: str | torch.device | None = None,
        max_batch_sequences: int = 64,
        logits_budget_bytes: int = 2 << 30,
        eos_token_id: int | list[int] | None = None,
        load_tokenizer: bool = True,
    ) -> None:
        from transformers import AutoModelForCausalLM, GenerationConfig

        self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = resolve_dtype(dtype, self.device)
        self.model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=self.dtype).to(self.device).eval()
        self.tokenizer = self._load_tokenizer(hf_dir) if load_tokenizer else None
        self.seed = int(seed)
        self._calls = 0
        self.max_batch_sequences = int(max_batch_sequences)
        self.logits_budget_bytes = int(logits_budget_bytes)

        orig_gen = getattr(self.model, "generation_config", None)
        eos = _as_list(eos_token_id)
        for source in (orig_gen, self.model.config, self.tokenizer):
            if not eos and source is not None:
                eos = _as_list(getattr(source, "eos_token_id", None))
        if not eos:
            raise ValueError(
                f"no end-of-sequence token id for {hf_dir}: set eos_token_id in config.json or "
                "generation_config.json, or pass eos_token_id= to the engine"
            )
        self.eos_token_ids = eos
        pad = None
        for source in (orig_gen, self.tokenizer, self.model.config):
            if pad is None and source is not None:
                pad = getattr(source, "pad_token_id", None)
        self.pad_token_id = int(pad) if pad is not None else eos[0]
        # A clean generation config: nothing from the checkpoint (top_k, repetition_penalty, ...)
        # leaks into sampling; generate() fills unset fields from this object.
        self.model.generation_config = GenerationConfig(
            eos_token_id=eos, pad_token_id=self.pad_token_id,
            bos_token_id=getattr(self.model.config, "bos_token_id", None),
        )

    @staticmethod
    def _load_tokenizer(hf_dir: str):
        try:
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(hf_dir)
        except Exception as exc:  # noqa: BLE001 - a missing/odd tokenizer only costs `text`
            logger.info("no tokenizer in %s (%s); Completion.text will be empty", hf_dir, exc)
            return None

    # ------------------------------------------------------------------ generation
    def _chunk_size(self, n: int, max_tokens: int) -> int:
        """Number of prompts per generate() call so that memory stays bounded."""
        per_seq = max_tokens * self.model.config.get_text_config().vocab_size * 4
        max_seqs = max(1, min(self.max_batch_sequences, self.logits_budget_bytes // max(per_seq, 1)))
        return max(1, max_seqs // n)

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], sampling: SamplingConfig) -> list[list[Completion]]:
        """Sample ``sampling.n`` completions per prompt (see :class:`RolloutEngine`)."""
        for i, p in enumerate(prompts):
            if len(p) == 0:
                raise ValueError(f"prompt {i} is empty; every prompt needs at least one token")
        seed = sampling.seed if sampling.seed is not None else self.seed + self._calls
        self._calls += 1
        results: list[list[Completion]] = []
        chunk = self._chunk_size(sampling.n, sampling.max_tokens)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for start in range(0, len(prompts), chunk):
                results.extend(self._generate_chunk(prompts[start:start + chunk], sampling))
        return results

    def _generate_chunk(self, prompts: list[list[int]], sampling: SamplingConfig) -> list[list[Completion]]:
        from transformers import GenerationConfig

        n = sampling.n
        width = max(len(p) for p in prompts)
        rows = [p for p in prompts for _ in range(n)]  # n consecutive copies per prompt
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, p in enumerate(rows):  # left padding
            input_ids[r, width - len(p):] = torch.tensor(p, dtype=torch.long)
            attention_mask[r, width - len(p):] = 1
        gen_kwargs = dict(
            max_new_tokens=sampling.max_tokens, min_new_tokens=0, num_return_sequences=1, num_beams=1,
            eos_token_id=self.eos_token_ids, pad_token_id=self.pad_token_id, repetition_penalty=1.0,
            return_dict_in_generate=True, output_logits=True,
        )
        if sampling.greedy:
            gen_kwargs.update(do_sample=False)
        else:
            # top_k=0 explicitly: transformers' global default is top_k=50
            gen_kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        out = self.model.generate(
            input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device),
            generation_config=GenerationConfig(**gen_kwargs),
        )
        new_tokens = out.sequences[:, width:].cpu()  # (rows, steps)
        # raw logits of each step -> log-prob of the token generated at that step (step by step:
        # no second (rows, steps, vocab) copy)
        tokens_dev = new_tokens.to(out.logits[0].device)
        logprobs = torch.stack([
            torch.log_softmax(step.float(), dim=-1).gather(-1, tokens_dev[:, s:s + 1]).squeeze(-1)
            for s, step in enumerate(out.logits)
        ], dim=1).cpu()  # (rows, steps)
        del out
        eos = set(self.eos_token_ids)
        completions: list[list[Completion]] = []
        for i in range(len(prompts)):
            group = []
            for r in range(i * n, (i + 1) * n):
                ids = new_tokens[r].tolist()
                stop = next((t for t, tok in enumerate(ids) if tok in eos), None)
                if stop is not None:
                    ids, finish = ids[: stop + 1], "stop"  # keep the eos token itself
                else:
                    finish = "length"
                    assert len(ids) == sampling.max_tokens, "generation ended early without eos"
                group.append(Completion(
                    token_ids=ids, logprobs=logprobs[r, : len(ids)].tolist(),
                    text=self._decode(ids), finish_reason=finish,
                ))
            completions.append(group)
        return completions

    def _decode(self, ids: list[int]) -> str:
        if self.tokenizer is None:
            return ""
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # ------------------------------------------------------------------ weights
    @torch.no_grad()
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy tensors into the model by HF name (casting to the model dtype/device).

        Tied embeddings: when the model ties ``lm_head.weight`` to ``embed_tokens.weight`` either
        name updates the shared tensor; when untied, an absent ``lm_head.weight`` just stays.
        Unknown names raise ``KeyError`` (listing them); shape mismatches raise ``ValueError``.
        """
        params = dict(self.model.named_parameters(remove_duplicate=False))
        params.update(dict(self.model.named_buffers(remove_duplicate=False)))
        unknown: list[str] = []
        for name, tensor in named_tensors:
            target = params.get(name)
            if target is None:
                if not name.endswith(_IGNORED_SUFFIXES):
                    unknown.append(name)
                continue
            if tuple(target.shape) != tuple(tensor.shape):
                raise ValueError(
                    f"update_weights: {name} has shape {tuple(tensor.shape)}, model expects {tuple(target.shape)}"
                )
            target.copy_(tensor.to(device=target.device, dtype=target.dtype))
        if unknown:
            raise KeyError(
                f"update_weights: {len(unknown)} name(s) not in the model: {unknown[:10]}"
                f"{' ...' if len(unknown) > 10 else ''} (expected HF names like {next(iter(params))!r})"
            )

    def close(self) -> None:
        """Drop the model (frees its memory once no other references remain)."""
        self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
