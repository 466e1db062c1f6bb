"""Checkpoint state that depends on the optimizer and on the megatron-core version.

* Optimizer-state pre-creation and the Adam-step save/restore only touch torch's own Adam/AdamW.
  Transformer Engine cannot be installed here (no CUDA), so ``TEFusedAdamLike`` mocks TE's
  ``FusedAdam`` as its source (transformer_engine/pytorch/optimizers/fused_adam.py, TE 2.x) behaves:
  ``step`` lives in ``param_groups``; ``state_dict()`` / ``load_state_dict()`` look every
  per-parameter key up in ``name_to_dtype_map`` (exp_avg, exp_avg_sq, master_param) and so raise
  ``KeyError`` on any other key. Reference for the torch side: the state torch's AdamW creates itself.
* Every checkpoint records the megatron-core that wrote it (a real offline training run), and an
  older megatron-core reading a newer checkpoint fails naming both versions.
"""
import glob
import json
import os
import subprocess
from types import SimpleNamespace

import pytest
import torch

from _dist_helpers import PYTHON, REPO, TORCHRUN, _run, env, free_port
from megatron_nft.megatron import checkpointing as C
from megatron_nft.testing import make_tiny_qwen2


class TEFusedAdamLike(torch.optim.Optimizer):
    """TE FusedAdam's state layout and state_dict behaviour; the update is plain-torch AdamW
    (the real one is a CUDA multi-tensor kernel)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, bias_correction=True))
        self.name_to_dtype_map = {"exp_avg": torch.float32, "exp_avg_sq": torch.float32,
                                  "master_param": torch.float32}

    def _unscaled(self, param, name):
        assert self.name_to_dtype_map[name] == torch.float32  # KeyError for any other key, like TE
        return self.state[param][name]

    def state_dict(self):
        sd = super().state_dict()
        params = [p for g in self.param_groups for p in g["params"]]
        for k, v in sd["state"].items():
            sd["state"][k] = {name: self._unscaled(params[k], name) for name in v}
        return sd

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        params = [p for g in self.param_groups for p in g["params"]]
        for k, v in state_dict["state"].items():
            self.state[params[k]] = {}
            for name, t in v.items():
                self.name_to_dtype_map[name]  # noqa: B018  (TE's set_scaled_state: KeyError here)
                self.state[params[k]][name] = t.float().clone()

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            group["step"] = group.get("step", 0) + 1  # one step per group, as TE keeps it
            b1, b2 = group["betas"]
            for p in group["params"]:
                st = self.state[p]
                if not st:
                    st["exp_avg"], st["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
                if p.grad is None:
                    continue
                st["exp_avg"].mul_(b1).add_(p.grad, alpha=1 - b1)
                st["exp_avg_sq"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                m = st["exp_avg"] / (1 - b1 ** group["step"])
                v = st["exp_avg_sq"] / (1 - b2 ** group["step"])
                p.mul_(1 - group["lr"] * group["weight_decay"]).addcdiv_(m, v.sqrt().add_(group["eps"]), value=-group["lr"])


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(4, 3, generator=g)), torch.nn.Parameter(torch.randn(5, generator=g))]


def _megatron_like(inner):
    """megatron's optimizer wrapper exposes the torch optimizer as ``.optimizer``."""
    return SimpleNamespace(optimizer=inner)


def _one_step(opt, params):
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()


def test_te_style_optimizer_survives_resume_preparation():
    params = _params()
    te = TEFusedAdamLike(params, lr=0.1)
    _one_step(te, params)
    saved = te.state_dict()
    assert C._adam_step(_megatron_like(te)) == 0.0  # TE's step is not per parameter
    fresh_params = _params()
    fresh = TEFusedAdamLike(fresh_params, lr=0.1)
    C._init_optimizer_state(_megatron_like(fresh))  # what load_checkpoint does first
    fresh.state_dict()  # KeyError: 'step' before the fix
    fresh.load_state_dict(saved)
    C._set_adam_step(_megatron_like(fresh), 7.0)
    after = fresh.state_dict()
    assert after["param_groups"][0]["step"] == 1
    for k, v in saved["state"].items():
        assert set(after["state"][k]) == {"exp_avg", "exp_avg_sq"}
        for name in v:
            assert torch.equal(after["state"][k][name], v[name])


def test_mock_refuses_a_per_parameter_step_like_te():
    params = _params()
    te = TEFusedAdamLike(params)
    te.state[params[0]]["step"] = torch.zeros(())
    te.state[params[0]]["exp_avg"] = torch.zeros_like(params[0])
    with pytest.raises(KeyError, match="step"):
        te.state_dict()


def test_torch_adamw_state_is_precreated_like_torch_and_step_restored():
    ref_params, params = _params(), _params()
    ref = torch.optim.AdamW(ref_params, lr=0.1)
    _one_step(ref, ref_params)  # torch's own state layout after a step
    opt = torch.optim.AdamW(params, lr=0.1)
    C._init_optimizer_state(_megatron_like(opt))
    for p, rp in zip(params, ref_params):
        st, rst = opt.state[p], ref.state[rp]
        assert set(st) == set(rst)
        for k in rst:
            assert st[k].shape == rst[k].shape and st[k].dtype == rst[k].dtype, k
        assert float(st["step"]) == 0.0
    opt.load_state_dict(ref.state_dict())
    assert C._adam_step(_megatron_like(opt)) == 1.0
    C._set_adam_step(_megatron_like(opt), 5.0)
    assert all(float(opt.state[p]["step"]) == 5.0 for p in params)
    chained = SimpleNamespace(chained_optimizers=[_megatron_like(TEFusedAdamLike(_params())), _megatron_like(opt)])
    assert C._torch_adams(chained) == [opt]


def test_newer_checkpoint_on_older_megatron_names_both_versions(tmp_path, monkeypatch):
    (tmp_path / "dist").mkdir()
    monkeypatch.setattr(C, "megatron_core_version", lambda: "0.16.1")
    with pytest.raises(C.CheckpointVersionError, match=r"megatron-core 0\.19\.2.*megatron-core 0\.16\.1"):
        C._check_readable(str(tmp_path), "0.19.2")
    C._check_readable(str(tmp_path), "0.16.1")  # same version: no opinion
    C._check_readable(str(tmp_path), None)  # checkpoints from before the version was recorded


# ------------------------------------------------------------------ real runs (slow)
def _installed_mcore(pythonpath=None) -> str:
    e = env()
    if pythonpath:
        e["PYTHONPATH"] = pythonpath + os.pathsep + e["PYTHONPATH"]
    code = "import megatron.core as m; print(m.__version__)"
    return subprocess.run([PYTHON, "-W", "ignore", "-c", code], env=e, capture_output=True, text=True,
                          check=True).stdout.split()[-1]


def _offline_run(tmp, out, max_steps):
    hf = tmp / "hf"
    if not hf.exists():
        make_tiny_qwen2(hf, vocab=300, hidden=64, layers=2, heads=4, kv_heads=2, head_dim=32)
    data = tmp / "rollouts.jsonl"
    with open(data, "w") as f:
        for g, rewards in enumerate([[1, 0, 0, 1], [0, 1, 0, 0]]):
            for i, r in enumerate(rewards):
                f.write(json.dumps({"group": f"q{g}", "prompt_ids": [5 + g, 6, 7], "response_ids": [8 + i, 9],
                                    "reward": r}) + "\n")
    cmd = [TORCHRUN, "--nproc-per-node", "1", "--master-port", str(free_port()), "-m", "megatron_nft.train",
           "--recipe", str(REPO / "recipes" / "tiny_cpu.yaml"), "--set", f"model.hf_path={hf}",
           "--set", f"rollout.source={data}", "--set", f"train.max_steps={max_steps}",
           "--set", "train.prompts_per_step=2", "--set", "rollout.n=4", "--set", "checkpoint.interval=1",
           "--set", "data.eval=null", "--set", "checkpoint.export_hf=false", "--set", f"output.dir={out}"]
    return _run(cmd, 600)


@pytest.mark.slow
def test_checkpoint_records_the_megatron_core_that_wrote_it(tmp_path):
    p = _offline_run(tmp_path, tmp_path / "run", 1)
    assert p.returncode == 0, p.output
    state = json.load(open(tmp_path / "run" / "checkpoints" / "step_00000001" / "trainer_state.json"))
    assert state["megatron_core"] == _installed_mcore()
    if os.environ.get("NFT_EXPECT_MCORE"):  # .ci/mcore_gpu_pin.sh: torchrun inherited PYTHONPATH
        assert state["megatron_core"].split("+")[0] == os.environ["NFT_EXPECT_MCORE"]


@pytest.mark.slow
def test_older_megatron_core_refuses_a_newer_checkpoint(tmp_path, monkeypatch):
    installed = _installed_mcore()
    if not installed.startswith("0.16"):  # .ci/mcore_gpu_pin.sh deselects it in its 0.19.2 run
        pytest.skip(f"needs the CPU pin megatron-core 0.16 installed, not {installed}")
    newer = sorted(glob.glob(str(REPO / ".ci" / "mcore-*")))
    if not newer:  # the README test command on a fresh machine: fetch the GPU pin's megatron-core (PyPI)
        subprocess.run(["bash", str(REPO / ".ci" / "mcore_gpu_pin.sh"), "--fetch"], cwd=REPO, check=True)
        newer = sorted(glob.glob(str(REPO / ".ci" / "mcore-*")))
    written = _installed_mcore(newer[-1])
    with monkeypatch.context() as m:  # write with the newer megatron-core, first on PYTHONPATH
        m.setenv("PYTHONPATH", newer[-1] + os.pathsep + os.environ.get("PYTHONPATH", ""))
        p = _offline_run(tmp_path, tmp_path / "run", 1)
    assert p.returncode == 0, p.output
    p = _offline_run(tmp_path, tmp_path / "run", 2)
    assert p.returncode != 0
    assert f"written by megatron-core {written}" in p.output and f"megatron-core {installed} cannot read" in p.output
