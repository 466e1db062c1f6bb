"""torchrun worker for the TP/PP forward and export tests.

Usage: torchrun --nproc-per-node N check_forward.py SPEC.json RESULT.json
SPEC: list of cases {"name", "hf", "ref", "layouts": [[tp, pp], ...], "impl",
      "mcore": optional dist checkpoint dir to load instead of the HF weights,
      "export": bool (check export_model_to_hf_state equals the HF tensors)}.
REF: torch.save({"input_ids": [b, s], "logits": [b, s, vocab]}).
Rank 0 writes {"<name>@tp<t>pp<p>": {"max_err": float, "export_equal": bool|None}}.
"""

import json
import sys

import torch
import torch.distributed as dist


def forward_logits(model, input_ids):
    """Full-vocab logits [b, s, Vpad] on the last PP stage (None elsewhere), forward only."""
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel
    from megatron.core.pipeline_parallel import get_forward_backward_func

    b, s = input_ids.shape
    pos = torch.arange(s).unsqueeze(0).expand(b, -1)

    def step(data_iter, m):
        ids = next(data_iter)
        return m(ids, pos, None), None  # loss_func None: the schedule stores the output

    out = get_forward_backward_func()(
        forward_step_func=step, data_iterator=iter([input_ids]), model=[model],
        num_microbatches=1, seq_length=s, micro_batch_size=b, forward_only=True,
    )
    if not ps.is_pipeline_last_stage():
        return None
    return tensor_parallel.gather_from_tensor_model_parallel_region(out[0])


def main(spec_path, result_path):
    from safetensors.torch import load_file

    from megatron_nft.checkpoint.convert import (export_model_to_hf_state, load_dist_checkpoint,
                                                 load_hf_into_model)
    from megatron_nft.megatron import parallel
    from megatron_nft.megatron.model import build_gpt_model

    results = {}
    for case in json.load(open(spec_path)):
        ref = torch.load(case["ref"])
        hf_state = load_file(f"{case['hf']}/model.safetensors") if case.get("export") else None
        for tp, pp in case["layouts"]:
            parallel.init_distributed(tp, pp, seed=0)
            model = build_gpt_model(case["hf"], transformer_impl=case.get("impl", "local"))
            if case.get("mcore"):
                load_dist_checkpoint([model], case["mcore"])
            else:
                load_hf_into_model([model], case["hf"], progress=False)
            model.eval()
            with torch.no_grad():
                logits = forward_logits(model, ref["input_ids"])
            err = 0.0
            if logits is not None:
                v = ref["logits"].shape[-1]
                err = (logits[..., :v].float() - ref["logits"]).abs().max().item()
            t = torch.tensor([err], dtype=torch.float64)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            equal = None
            if hf_state is not None:
                got = dict(export_model_to_hf_state([model]))
                ok = set(got) == set(hf_state) and all(torch.equal(got[k], hf_state[k]) for k in hf_state)
                flag = torch.tensor([int(ok)])
                dist.all_reduce(flag, op=dist.ReduceOp.MIN)
                equal = bool(flag.item())
            results[f"{case['name']}@tp{tp}pp{pp}"] = {"max_err": t.item(), "export_equal": equal}
            del model
    if dist.get_rank() == 0:
        json.dump(results, open(result_path, "w"), indent=2)
    parallel.destroy()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
