"""The megatron-core policy: model chunks, distributed optimizer, and the two passes the
recipe needs -- forward-only log-probs (pi_old) and one optimizer step of the RL loss --
both through megatron's pipeline schedule (``get_forward_backward_func``).

Loss aggregation across micro-batches, pipeline stages and data-parallel ranks is exact:
the model config sets ``calculate_per_token_loss``, each micro-batch returns
``(sum_t w_t * loss_t, n_tokens)``, and megatron's ``finalize_model_grads`` divides the
gradients by the global token count (all-reduced over DP). The weights ``w`` are chosen up
front from global counts so that every aggregation mode (token mean, sequence-mean
token-mean, token-sum / constant) comes out exactly as if the whole batch were one tensor.
"""
from __future__ import annotations

import math
import time
from functools import partial
from typing import Optional, Sequence

import torch
import torch.distributed as dist

from megatron_nft.algorithms import aggregation_weights, get_algorithm, tis_weights
from megatron_nft.config import RecipeConfig
from megatron_nft.megatron.batches import MicroBatch, build_micro_batches, dp_shard, scatter_response_values
from megatron_nft.megatron.logprobs import chunked_logprobs
from megatron_nft.megatron.model import build_gpt_model, unwrap_model, vocab_size_of
from megatron_nft.megatron.optim_step import guarded_step, params_finite
from megatron_nft.megatron.parallel import get_info
from megatron_nft.megatron.precision import (check_precision_supported, fp8_align_size, mfu, model_flops_per_token, peak_flops,
                                             precision_overrides, token_weighted_seq_len)
from megatron_nft.types import Sample


def resolve_transformer_impl(impl: str) -> str:
    """``auto``: Transformer Engine on CUDA when its PyTorch part imports, else torch SDPA; CPU
    uses the local spec. ``import transformer_engine`` alone is not enough: it succeeds when TE's
    extension was built against another torch (the error is swallowed) and TE's layers then fail
    (../shared/DESIGN.md); ``transformer_engine.pytorch`` loads that extension."""
    if impl != "auto":
        return impl
    if not torch.cuda.is_available():
        return "local"
    try:
        import transformer_engine.pytorch  # noqa: F401

        return "transformer_engine"
    except Exception:
        return "sdpa"


def _patch_output_layer(gpt) -> None:
    """Make the last stage return final hidden states instead of logits: log-probs are computed
    from them in chunks (never the full [tokens, vocab] logits)."""
    if not gpt.post_process or getattr(gpt, "_nft_hidden_out", False):
        return

    def hidden_out(hidden_states, weight=None, runtime_gather_output=None):
        if gpt.config.sequence_parallel:
            # [s/TP, b, H] -> [s, b, H]; chunked_logprobs returns the full (TP-summed) grad of
            # its input, so the backward only has to take this rank's slice of it.
            from megatron.core.tensor_parallel import gather_from_sequence_parallel_region

            hidden_states = gather_from_sequence_parallel_region(
                hidden_states, tensor_parallel_output_grad=False)
        return hidden_states, None

    gpt.output_layer.forward = hidden_out
    gpt._nft_hidden_out = True


def _output_weight(gpt) -> torch.Tensor:
    if gpt.share_embeddings_and_output_weights:
        return gpt.shared_embedding_or_output_weight()
    return gpt.output_layer.weight


class MegatronPolicy:
    """Model + optimizer + scheduler on this rank (after ``init_distributed``)."""

    def __init__(self, cfg: RecipeConfig, hf_config: dict, *, total_updates: int = 0,
                 max_sequence_length: Optional[int] = None, training: bool = True):
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
        from megatron.core.distributed.finalize_model_grads import finalize_model_grads
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
        from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

        self.cfg = cfg
        self.algo = get_algorithm(cfg.algorithm.name)
        self.info = get_info()
        self.on_gpu = self.info.device.type == "cuda"
        bf16 = cfg.train.bf16 if cfg.train.bf16 is not None else self.on_gpu
        self.bf16 = bool(bf16)
        self.transformer_impl = resolve_transformer_impl(cfg.model.transformer_impl)
        check_precision_supported(cfg, self.transformer_impl)  # before any model is built
        self.explicit_mask = self.transformer_impl == "local"
        if cfg.parallel.virtual_pp:
            raise ValueError("parallel.virtual_pp (interleaved pipeline schedule) is not supported by "
                             "this trainer yet; set it to null (parallel.pp_layer_split balances stages)")
        self.sequence_parallel = bool(cfg.parallel.sequence_parallel) and self.info.tp > 1
        # padded micro-batch length: SP splits the sequence over TP; FP8 GEMMs want 16 | tokens
        self.pad_multiple = math.lcm(self.info.tp if self.sequence_parallel else 1, fp8_align_size(cfg))
        gpt = build_gpt_model(
            hf_config, transformer_impl=self.transformer_impl,
            params_dtype=torch.bfloat16 if self.bf16 else torch.float32,
            make_vocab_size_divisible_by=cfg.model.make_vocab_size_divisible_by,
            max_sequence_length=max_sequence_length,
            calculate_per_token_loss=True,
            sequence_parallel=self.sequence_parallel,
            pp_layer_split=cfg.parallel.pp_layer_split,
            **_pipeline_kwargs(self.info.pp),
            **precision_overrides(cfg, transformer_impl=self.transformer_impl),
            **_recompute_kwargs(cfg.model.recompute),
        )
        gpt.to(self.info.device)
        _patch_output_layer(gpt)
        self.gpt = gpt
        self.tconfig = gpt.config
        self.vocab_size = vocab_size_of(gpt)
        self._peak_flops = peak_flops() if self.on_gpu else None  # env NFT_PEAK_TFLOPS overrides
        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True, overlap_grad_reduce=False,
            use_distributed_optimizer=cfg.parallel.distributed_optimizer,
        )
        module = gpt
        if self.bf16:
            from megatron.core.transformer.module import Float16Module

            module = Float16Module(self.tconfig, gpt)
        self.updates = 0
        if not training:  # scoring only (nft-logprobs): no DDP buffers, no optimizer state
            self.model, self.chunks = module, [module]
            return
        self.model = DistributedDataParallel(self.tconfig, ddp_config, module)
        self.chunks = [self.model]
        t = cfg.train
        opt_config = OptimizerConfig(
            optimizer="adam", lr=t.lr, min_lr=t.min_lr, weight_decay=t.weight_decay,
            adam_beta1=t.adam_beta1, adam_beta2=t.adam_beta2, adam_eps=t.adam_eps,
            clip_grad=t.grad_clip, bf16=self.bf16, params_dtype=torch.bfloat16 if self.bf16 else torch.float32,
            use_distributed_optimizer=cfg.parallel.distributed_optimizer,
        )
        self.optimizer = get_megatron_optimizer(opt_config, self.chunks)
        if t.fused_adam:
            use_fused_torch_adam(self.optimizer)
        decay_steps = max(total_updates, t.warmup_steps + 1)
        self.scheduler = OptimizerParamScheduler(
            self.optimizer, init_lr=0.0 if t.warmup_steps > 0 else t.lr, max_lr=t.lr, min_lr=t.min_lr,
            lr_warmup_steps=t.warmup_steps, lr_decay_steps=decay_steps,
            lr_decay_style=t.lr_schedule, start_wd=t.weight_decay, end_wd=t.weight_decay,
            wd_incr_steps=decay_steps, wd_incr_style="constant",
        )
        if t.warmup_steps > 0:
            self.scheduler.step(increment=1)  # warm-up starts at lr/warmup, not at 0 (a wasted update)
        self.tconfig.finalize_model_grads_func = finalize_model_grads
        self.tconfig.grad_scale_func = self.optimizer.scale_loss
        self.tconfig.no_sync_func = self.model.no_sync

    # ------------------------------------------------------------------ helpers
    def _tp_group(self):
        from megatron.core import parallel_state as ps

        return ps.get_tensor_model_parallel_group() if self.info.tp > 1 else None

    def _token_logprobs(self, hidden: torch.Tensor, mb: MicroBatch, entropy: bool):
        """hidden [b, s, H] on the last stage -> (logprobs [b, s], entropy [b, s] or None)."""
        weight = _output_weight(self.gpt)
        v_local = weight.shape[0]
        if hidden.dtype != weight.dtype:  # Float16Module hands the last stage's output back in fp32;
            hidden = hidden.to(weight.dtype)  # matmul in the weight's dtype, as the output layer would
        return chunked_logprobs(
            hidden, weight, mb.labels, tp_group=self._tp_group(),
            vocab_start=self.info.tp_rank * v_local, vocab_size=self.vocab_size,
            chunk_tokens=4096, compute_entropy=entropy)

    def _run_schedule(self, mbs: list[MicroBatch], loss_func, forward_only: bool) -> list:
        from megatron.core.pipeline_parallel import get_forward_backward_func

        def forward_step(data_iterator, model):
            mb = next(data_iterator)
            out = model(mb.tokens, mb.position_ids, mb.attention_mask)
            return out, partial(loss_func, mb)

        fb = get_forward_backward_func()
        return fb(
            forward_step_func=forward_step, data_iterator=iter(mbs), model=self.chunks,
            num_microbatches=len(mbs), seq_length=max(m.tokens.shape[1] for m in mbs),
            micro_batch_size=max(m.tokens.shape[0] for m in mbs), forward_only=forward_only,
        )

    def _micro_batches(self, samples: Sequence[Sample], weights=None) -> list[MicroBatch]:
        mbs = build_micro_batches(samples, micro_batch_tokens=self.cfg.train.micro_batch_tokens,
                                  token_weights=weights, explicit_mask=self.explicit_mask,
                                  pad_to_multiple_of=self.pad_multiple)
        return [m.to(self.info.device) for m in mbs]

    def _my_shard(self, samples: Sequence[Sample]) -> list[int]:
        return dp_shard([len(s.tokens) for s in samples], self.info.dp_rank, self.info.dp)

    # ------------------------------------------------------------------ forward only
    @torch.no_grad()
    def compute_logprobs(self, samples: Sequence[Sample], *, with_entropy: bool = True) -> None:
        """Fill ``old_logprobs`` (and ``entropy``) of this DP rank's shard on the last stage."""
        mine = self._my_shard(samples)
        if not mine:
            return
        shard = [samples[i] for i in mine]
        mbs = self._micro_batches(shard)
        for m in self.chunks:
            m.eval()

        def loss_func(mb, hidden):
            lp, ent = self._token_logprobs(hidden, mb, with_entropy)
            return torch.zeros((), device=hidden.device), {"lp": lp, "ent": ent}

        outs = self._run_schedule(mbs, loss_func, forward_only=True)
        if self.info.is_last_stage:
            for mb, o in zip(mbs, outs):
                lps = scatter_response_values(mb, o["lp"], shard)
                ents = scatter_response_values(mb, o["ent"], shard) if o["ent"] is not None else None
                for r, i in enumerate(mb.indices):
                    shard[i].old_logprobs = lps[r]
                    if ents is not None:
                        shard[i].entropy = ents[r]

    # ------------------------------------------------------------------ training
    def _loss_func(self, mb: MicroBatch, hidden: torch.Tensor):
        """Megatron loss callback: ``(sum_t w_t * loss_t, n_tokens, report)`` of one micro-batch;
        ``report`` = [loss sum, tokens, |ratio - 1| sum, then the algorithm's metric counts]."""
        a = self.cfg.algorithm
        lp, _ = self._token_logprobs(hidden, mb, entropy=False)
        tl = self.algo.token_loss(a, lp, mb.old_logprobs, mb.correct, mb.r_hat, mb.advantage)
        w = mb.token_weight
        if a.tis_cap is not None:
            w = w * tis_weights(mb.old_logprobs, mb.rollout_logprobs, a.tis_cap)
        loss = (tl * w).sum()
        mask = mb.loss_mask
        n = mask.sum()
        with torch.no_grad():
            ratio = torch.exp((lp - mb.old_logprobs).clamp(max=20.0))
            extra = self.algo.metric_counts(a, lp, mb.old_logprobs, mb.correct, mb.r_hat, mask)
            report = torch.stack([loss.detach(), n, ((ratio - 1).abs() * mask).sum()]
                                 + [v for k in self.algo.metrics for v in extra[k]]).double()
        return loss, n.to(torch.int), {"report": report}

    def train_step(self, samples: Sequence[Sample]) -> dict:
        """One optimizer step on ``samples`` (the same list on every rank); returns metrics."""
        t0 = time.perf_counter()
        info = self.info
        shard = [samples[i] for i in self._my_shard(samples)]
        counts = torch.tensor([sum(s.response_len for s in shard), len(shard)], dtype=torch.float64,
                              device=info.device)
        if info.dp > 1:
            from megatron.core import parallel_state as ps

            dist.all_reduce(counts, group=ps.get_data_parallel_group())
        n_tokens, n_seqs = int(counts[0].item()), int(counts[1].item())
        if not shard:  # more DP ranks than samples: one masked-out row keeps the schedule alive
            shard = [Sample(tokens=[0, 0], prompt_len=2)]
        a = self.cfg.algorithm
        weights = aggregation_weights(a.aggregation, [s.response_len for s in shard], num_tokens=n_tokens,
                                      num_seqs=n_seqs, constant=a.loss_constant, dp_size=info.dp)
        mbs = self._micro_batches(shard, weights)
        for m in self.chunks:
            m.train()
            m.zero_grad_buffer()
        self.optimizer.zero_grad()
        outs = self._run_schedule(mbs, self._loss_func, forward_only=False)
        report = self._step_report(outs, n_tokens)
        ok, grad_norm, nonfinite = guarded_step(self.optimizer, report["train/loss"])
        if ok:  # a skipped update moves neither the schedule nor the update count
            self.scheduler.step(increment=1)
            self.updates += 1
        return {**self._throughput(samples, time.perf_counter() - t0), **report,
                "train/grad_norm": grad_norm,
                "train/lr": self.optimizer.param_groups[0]["lr"],
                "train/tokens": n_tokens,
                "train/update_skipped": 0.0 if ok else 1.0,
                "train/nonfinite": 1.0 if nonfinite else 0.0}

    def _step_report(self, outs: list, n_tokens: int) -> dict:
        """Sum the micro-batch reports of the last stage over DP, share them with every rank."""
        names = self.algo.metrics
        report = torch.zeros(3 + 2 * len(names), dtype=torch.float64, device=self.info.device)
        if self.info.is_last_stage:
            for o in outs:
                report += o["report"]
        r = self._reduce_report(report).tolist()
        out = {"train/loss": r[0] / max(n_tokens, 1), "train/ratio_abs_dev": r[2] / max(r[1], 1)}
        for i, name in enumerate(names):
            num, den = r[3 + 2 * i], r[4 + 2 * i]
            out[name] = num / den if den else 0.0
        return out

    def _throughput(self, samples: Sequence[Sample], seconds: float) -> dict:
        """Tokens/s of the step (all tokens the model processed, every rank) and model FLOPs
        utilisation (``precision.model_flops_per_token``: 6N + attention, Megatron/PaLM style)."""
        lengths = [len(s.tokens) for s in samples]
        tps = sum(lengths) / max(seconds, 1e-9)
        fpt = model_flops_per_token(self.gpt.nft_arch, token_weighted_seq_len(lengths))
        out = {"perf/train_tokens_per_s": tps, "perf/tflops_per_device": tps * fpt / self.info.world_size / 1e12}
        if self._peak_flops:
            out["perf/mfu"] = mfu(tps, fpt, self._peak_flops, n_devices=self.info.world_size)
        return out

    def _reduce_report(self, t: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
        """Reduce over DP on the last stage, then share with every rank (last stage -> all PP)."""
        from megatron.core import parallel_state as ps

        if self.info.dp > 1:
            dist.all_reduce(t, op=op, group=ps.get_data_parallel_group())
        if self.info.pp > 1:
            dist.broadcast(t, src=ps.get_pipeline_model_parallel_last_rank(),
                           group=ps.get_pipeline_model_parallel_group())
        return t

    def response_stats(self, batches: Sequence[Sequence[Sample]]) -> dict:
        """Entropy and rollout-engine vs trainer log-prob gap over all response tokens of the
        mini-batches ``batches`` (each passed to :meth:`compute_logprobs` first); reduced over
        DP, shared with every rank."""
        sums = torch.zeros(4, dtype=torch.float64, device=self.info.device)  # ent, n_ent, gap, n_gap
        gap_max = torch.zeros(1, dtype=torch.float64, device=self.info.device)
        mine = [b[i] for b in batches for i in self._my_shard(b)] if self.info.is_last_stage else []
        for s in mine:
            if s.entropy:
                sums[0] += sum(s.entropy)
                sums[1] += len(s.entropy)
            if s.rollout_logprobs is not None and s.old_logprobs is not None:
                d = (torch.tensor(s.rollout_logprobs, dtype=torch.float64)
                     - torch.tensor(s.old_logprobs, dtype=torch.float64)).abs()
                sums[2] += d.sum()
                sums[3] += d.numel()
                gap_max[0] = torch.maximum(gap_max[0], d.max())
        sums = self._reduce_report(sums)
        gap_max = self._reduce_report(gap_max, op=dist.ReduceOp.MAX)
        out = {}
        if sums[1] > 0:
            out["rollout/entropy"] = (sums[0] / sums[1]).item()
        if sums[3] > 0:
            out["rollout/logprob_gap_mean"] = (sums[2] / sums[3]).item()
            out["rollout/logprob_gap_max"] = gap_max.item()
        return out

    # ------------------------------------------------------------------ state
    def gather_response_values(self, samples: Sequence[Sample], attr: str = "old_logprobs") -> None:
        """Make ``attr`` of every sample available on every rank (it lives on the last stage of
        the DP rank that computed it)."""
        from megatron.core import parallel_state as ps

        info = self.info
        local = {i: getattr(samples[i], attr) for i in self._my_shard(samples)} if info.is_last_stage else {}
        if info.dp > 1 and info.is_last_stage:
            parts = [None] * info.dp
            dist.all_gather_object(parts, local, group=ps.get_data_parallel_group())
            for p in parts:
                local.update(p)
        if info.pp > 1:
            box = [local]
            dist.broadcast_object_list(box, src=ps.get_pipeline_model_parallel_last_rank(),
                                       group=ps.get_pipeline_model_parallel_group())
            local = box[0]
        for i, v in local.items():
            setattr(samples[i], attr, v)

    def unwrapped(self):
        return unwrap_model(self.model)

    def weights_finite(self) -> bool:
        """Collective: every parameter on every rank finite (checked before a checkpoint / export)."""
        return params_finite([self.unwrapped()])

    @torch.no_grad()
    def weights_loaded(self) -> None:
        """Call after writing model parameters directly (HF weights, a converted checkpoint).

        With bf16 the optimizer keeps its own fp32 main copy of every parameter, taken when the
        optimizer was built (random init); the next step would compute ``main - lr*update`` and
        copy it back, silently replacing the loaded weights. Re-read the main copies from the
        model (fp32 training shares the tensors, and this is a no-op copy)."""
        if getattr(self, "optimizer", None) is not None:
            self.optimizer.reload_model_params()

    def load_weights(self, path: str) -> None:
        """Collective: weights from an HF directory or a megatron-nft dist checkpoint."""
        from megatron_nft.checkpoint.hf_io import load_initial_weights

        load_initial_weights([self.unwrapped()], path)
        self.weights_loaded()

    def hf_state(self, gather_to: str = "all"):
        """Collective stream of ``(hf_name, tensor)``, TP/PP shards gathered (the weight sync)."""
        from megatron_nft.checkpoint.hf_io import export_model_to_hf_state

        return export_model_to_hf_state([self.unwrapped()], gather_to=gather_to)

    def export_hf_dir(self, out_dir: str, src_dir: str) -> None:
        """Collective: the policy as an HF directory (config and tokenizer from ``src_dir``)."""
        from megatron_nft.checkpoint.hf_io import export_hf_dir

        export_hf_dir([self.unwrapped()], out_dir, src_dir)

    def describe(self) -> str:
        """One line on the model as built (collective over the PP group): layers per pipeline
        stage, sequence parallelism, micro-batch length multiple, precision."""
        from megatron.core import parallel_state as ps

        n = len(unwrap_model(self.model).decoder.layers)
        stages = [n] * self.info.pp
        if self.info.pp > 1:
            dist.all_gather_object(stages, n, group=ps.get_pipeline_model_parallel_group())
        fp8 = self.cfg.precision.fp8
        return (f"[nft] model: {self.transformer_impl} spec, layers per pipeline stage {stages}; "
                f"sequence parallel {'on' if self.sequence_parallel else 'off'}; micro-batch length "
                f"multiple {self.pad_multiple}; {'bf16' if self.bf16 else 'fp32'}"
                f"{f' + fp8 {fp8}/{self.cfg.precision.fp8_recipe}' if fp8 else ''}")


def use_fused_torch_adam(optimizer) -> int:
    """Without Transformer Engine / apex, megatron-core falls back to ``torch.optim.AdamW`` in its
    default multi-tensor (foreach) mode -- DESIGN.md measured that fallback as the main gap to
    HF + fused AdamW. Switch those optimizers to torch's fused kernel (CUDA; CPU since torch
    2.4): same update rule on the same fp32 main params. Returns how many were switched."""
    switched = 0
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", None)
        if type(inner) is torch.optim.AdamW:  # not TE/apex FusedAdam subclasses
            for group in inner.param_groups:
                group["fused"], group["foreach"] = True, False
            switched += 1
    return switched


def _pipeline_kwargs(pp: int) -> dict:
    """Token-budget micro-batches differ in shape, so pipeline stages exchange shapes first.
    (megatron 0.16 rejects variable_seq_lengths with the default 'allgather' MoE dispatcher,
    even for dense models; 'alltoall' is inert without experts.)"""
    if pp == 1:
        return {}
    return {"variable_seq_lengths": True, "moe_token_dispatcher_type": "alltoall"}


def _recompute_kwargs(mode: str) -> dict:
    if mode == "none":
        return {}
    if mode == "selective":
        return {"recompute_granularity": "selective"}
    return {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1}
