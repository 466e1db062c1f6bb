"""Resume is the same experiment, and a corrupt newest checkpoint has a way out: real nft-train
runs on the offline tiny model, one output.dir, each start with a changed recipe."""
import json

import pytest

from test_faults import ckpt_steps, make_hf, recipe, train, write_offline

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    return make_hf(tmp_path_factory)


def test_changed_experiment_refused_lr_warned_recipes_kept(tmp_path, tiny_hf):
    out = tmp_path / "run"
    r = recipe(tmp_path, tiny_hf, write_offline(tmp_path / "a.jsonl"), max_steps=1)
    assert train(r).returncode == 0
    p = train(r, "rollout.n=4", "train.max_steps=2")
    assert p.returncode == 2 and "rollout.n: 16 -> 4" in p.stderr, p.output
    assert "checkpoint.allow_changed_keys=rollout.n" in p.stderr and "Traceback" not in p.stderr
    assert ckpt_steps(out) == [1]
    p = train(r, "train.lr=0.5", "train.max_steps=2")
    assert p.returncode == 0, p.output
    assert "train.lr: the recipe says 0.5 but" in p.stdout and "the checkpoint's lr schedule wins" in p.stdout
    p = train(r, "rollout.n=4", "checkpoint.allow_changed_keys=rollout.n", "train.max_steps=3")
    assert p.returncode == 0, p.output
    assert ckpt_steps(out) == [2, 3]
    assert sorted(f.name for f in (out / "recipes").iterdir()) == ["start_001.yaml", "start_002.yaml", "start_003.yaml"]
    assert "lr: 0.5" in (out / "recipes" / "start_002.yaml").read_text()


def test_corrupt_latest_checkpoint_named_and_previous_resumes(tmp_path, tiny_hf):
    out = tmp_path / "run"
    r = recipe(tmp_path, tiny_hf, write_offline(tmp_path / "a.jsonl"), max_steps=2)
    assert train(r).returncode == 0
    bad = out / "checkpoints" / "step_00000002"
    (bad / "trainer_state.json").write_text('{"step": 2, "upd')
    p = train(r, "train.max_steps=3")
    assert p.returncode == 2 and str(bad) in p.stderr and "checkpoint.resume_from=previous" in p.stderr, p.output
    for f in (bad / "dist").iterdir():  # overwritten shard bytes: named at load time too
        if f.suffix == ".distcp":
            f.write_bytes(b"\0" * f.stat().st_size)
    (bad / "trainer_state.json").write_text((out / "checkpoints" / "step_00000001" / "trainer_state.json")
                                            .read_text().replace('"step": 1', '"step": 2'))
    p = train(r, "train.max_steps=3")
    assert p.returncode == 2 and "cannot be loaded" in p.stderr and str(bad) in p.stderr, p.output
    p = train(r, "train.max_steps=3", "checkpoint.resume_from=previous")
    assert p.returncode == 0, p.output
    assert "resumed from" in p.stdout and "step_00000001" in p.stdout
    steps = [json.loads(line)["step"] for line in open(out / "metrics.jsonl")]
    assert steps == [1, 2, 3], steps  # offline: no eval, so no step-0 row


def test_changed_tiny_model_size_rebuilds_the_base(tmp_path):
    """No checkpoint yet, the tiny base already built: a new model.tiny.hidden_size is built,
    not silently replaced by the old base (recipe and hf config agree)."""
    import subprocess

    from _dist_helpers import PYTHON, REPO, env
    from megatron_nft.tiny import BASE_DIR_NAME

    out = tmp_path / "run"

    def run(hidden):
        cmd = [PYTHON, "-m", "megatron_nft.train", "--recipe", str(REPO / "recipes" / "tiny_cpu.yaml")]
        for s in (f"output.dir={out}", "train.max_steps=0", "data.eval=null", "model.tiny.sft_steps=2",
                  f"model.tiny.hidden_size={hidden}", "checkpoint.export_hf=false"):
            cmd += ["--set", s]
        p = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
        return json.loads((out / BASE_DIR_NAME / "config.json").read_text())["hidden_size"]

    assert run(128) == 128
    assert run(64) == 64
