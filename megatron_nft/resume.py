"""Resume is the same experiment: which checkpoint a run resumes from, and whether the new
recipe may continue it.

Every checkpoint's ``trainer_state.json`` holds the recipe that wrote it. On resume, a changed
key that makes a different experiment (:data:`EXPERIMENT_KEYS`) is refused, listing the keys,
unless ``checkpoint.allow_changed_keys`` names it (or a prefix such as ``data.``); a changed key
the checkpoint overrides (:data:`CHECKPOINT_WINS`, the lr schedule) is a warning saying which
value wins. ``checkpoint.resume_from: previous`` skips the newest checkpoint (e.g. a corrupt
one) for the one before it. Each start keeps its recipe in ``recipes/start_<n>.yaml``.
"""
from __future__ import annotations

import json
import os
from typing import Optional

from megatron_nft.config import RecipeConfig, dump_config
from megatron_nft.stability import UserError

EXPERIMENT_KEYS = ("seed", "algorithm.", "model.hf_path", "model.tiny.", "model.make_vocab_size_divisible_by",
                   "data.train", "data.train_size", "data.prompt_key", "data.answer_key", "data.system_prompt",
                   "rollout.source", "rollout.n", "rollout.reward", "rollout.temperature", "rollout.top_p",
                   "rollout.max_prompt_tokens", "rollout.max_response_tokens", "train.prompts_per_step",
                   "train.updates_per_rollout")
CHECKPOINT_WINS = ("train.lr", "train.min_lr", "train.lr_schedule", "train.warmup_steps", "train.weight_decay")


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _matches(key: str, patterns) -> bool:
    return any(p == "*" or key == p or (p.endswith(".") and key.startswith(p)) for p in patterns)


def changed_keys(old: dict, new: dict) -> dict:
    """-> {key: (old value, new value)} over the flattened recipes (keys missing on one side skipped)."""
    a, b = flatten(old), flatten(new)
    return {k: (a[k], b[k]) for k in sorted(a.keys() & b.keys()) if a[k] != b[k]}


def check_same_experiment(old: dict, cfg: RecipeConfig, ckpt: str, log=print) -> None:
    """Raise :class:`UserError` on a changed experiment key not allowed by the recipe; warn on
    keys the checkpoint overrides."""
    allowed = [s.strip() for s in cfg.checkpoint.allow_changed_keys.split(",") if s.strip()]
    diff = changed_keys(old, json.loads(json.dumps(cfg.to_dict())))  # as stored: tuples are lists
    refused = {k: v for k, v in diff.items() if _matches(k, EXPERIMENT_KEYS) and not _matches(k, allowed)}
    if refused:
        listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in refused.items())
        raise UserError(f"resuming {ckpt} with a different experiment ({listed}): restore these keys, use a new "
                        f"output.dir, or allow them with --set checkpoint.allow_changed_keys={','.join(refused)}")
    for k, (a, b) in diff.items():
        if _matches(k, CHECKPOINT_WINS):
            log(f"[nft] WARNING {k}: the recipe says {b!r} but {ckpt} was written with {a!r}; the checkpoint's "
                "lr schedule wins on resume (start a new output.dir to use the new value)")
        elif _matches(k, EXPERIMENT_KEYS):
            log(f"[nft] resume: {k} changed {a!r} -> {b!r} (allowed by checkpoint.allow_changed_keys)")


def _read_state(path: str) -> dict:
    state_file = os.path.join(path, "trainer_state.json")
    try:
        with open(state_file, encoding="utf-8") as f:
            return json.load(f)
    except (ValueError, OSError) as e:
        raise UserError(f"checkpoint {path} is corrupt ({state_file}: {type(e).__name__}: {e}): resume from "
                        "the previous complete checkpoint with --set checkpoint.resume_from=previous, or "
                        f"delete {path}") from None


def resume_checkpoint(cfg: RecipeConfig, out_dir: str, log=print) -> Optional[str]:
    """The checkpoint this run resumes from (None: a fresh start), its recipe checked against
    ``cfg``. Reads files only (every rank, before the model is built)."""
    from megatron_nft.megatron.checkpointing import list_checkpoints

    found = [p for _, p in list_checkpoints(out_dir)]
    if cfg.checkpoint.resume_from == "previous":
        if len(found) < 2:
            raise UserError(f"checkpoint.resume_from=previous: {out_dir} has {len(found)} complete checkpoint(s), "
                            "no previous one; set checkpoint.resume_from=latest")
        log(f"[nft] checkpoint.resume_from=previous: skipping {found[-1]}")
        found = found[:-1]
    if not found:
        return None
    ckpt = found[-1]
    recipe = _read_state(ckpt).get("recipe")
    if recipe is None:
        log(f"[nft] {ckpt} holds no recipe (written by an older megatron-nft): resume not checked")
    else:
        check_same_experiment(recipe, cfg, ckpt, log)
    return ckpt


def write_start_recipe(cfg: RecipeConfig, out_dir: str) -> str:
    """Rank 0: ``out_dir/recipes/start_<n>.yaml``, one per start of the run, never overwritten."""
    root = os.path.join(out_dir, "recipes")
    os.makedirs(root, exist_ok=True)
    n = 1 + sum(1 for f in os.listdir(root) if f.startswith("start_") and f.endswith(".yaml"))
    path = os.path.join(root, f"start_{n:03d}.yaml")
    with open(path, "x") as f:
        f.write(dump_config(cfg))
    return path


def load_resumed(policy, ckpt: str) -> dict:
    """Collective ``load_checkpoint`` whose failures name the checkpoint and the way out."""
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException

    from megatron_nft.megatron.checkpointing import CheckpointVersionError, load_checkpoint

    try:
        return load_checkpoint(policy, ckpt)
    except CheckpointVersionError:
        raise
    except (Exception, CheckpointException) as e:  # torn / overwritten shards: EOFError, pickle, JSON errors
        raise UserError(f"checkpoint {ckpt} cannot be loaded ({type(e).__name__}: {e}): resume from the previous "
                        "complete checkpoint with --set checkpoint.resume_from=previous, or delete it") from e
