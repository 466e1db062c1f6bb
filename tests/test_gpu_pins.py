"""The GPU pin set (requirements-gpu.txt, requirements-gpu-te.txt, setup.py's bounds and `gpu`
extra) must not contradict the released wheels' own requirements. The reference is
docker/pins_metadata.json: Requires-Dist lines copied from the pinned wheels' METADATA (no
network at test time). Nothing here installs the GPU stack: it cannot install on this CPU box."""
import ast
import json
import os

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPU_PYTHON = "3.12"  # NGC / vLLM images; megatron-core >= 0.17 needs it


def _requirements(name: str) -> dict[str, Requirement]:
    reqs = {}
    with open(os.path.join(ROOT, name)) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                r = Requirement(line)
                reqs[canonicalize_name(r.name)] = r
    return reqs


def _pinned(req: Requirement) -> str:
    specs = list(req.specifier)
    assert len(specs) == 1 and specs[0].operator == "==", f"{req} is not pinned with =="
    return specs[0].version


def _setup_kwargs() -> dict:
    tree = ast.parse(open(os.path.join(ROOT, "setup.py")).read())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    return {k.arg: ast.literal_eval(k.value) for k in call.keywords
            if k.arg in ("install_requires", "extras_require", "python_requires")}


def _wheel_requires(meta: dict, package: str, extras=()) -> dict[str, SpecifierSet]:
    """The wheel's requirements on the GPU platform (Linux x86_64, Python 3.12) with ``extras``."""
    out = {}
    for line in meta[package]["Requires-Dist"]:
        r = Requirement(line)
        env = {"python_version": GPU_PYTHON, "platform_machine": "x86_64", "platform_system": "Linux"}
        if r.marker is not None and not any(r.marker.evaluate(dict(env, extra=e)) for e in ("", *extras)):
            continue
        out[canonicalize_name(r.name)] = out.get(canonicalize_name(r.name), SpecifierSet()) & r.specifier
    return out


@pytest.fixture(scope="module")
def meta():
    with open(os.path.join(ROOT, "docker", "pins_metadata.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def pins():
    return {k: _pinned(r) for k, r in _requirements("requirements-gpu.txt").items() if r.specifier}


def test_snapshot_is_of_the_pinned_versions(meta, pins):
    te = _requirements("requirements-gpu-te.txt")["transformer-engine"]
    assert meta["vllm"]["Version"] == pins["vllm"]
    assert meta["megatron-core"]["Version"] == pins["megatron-core"]
    assert meta["transformer-engine"]["Version"] == _pinned(te)


def test_every_pin_satisfies_vllms_requirements(meta, pins):
    vllm = _wheel_requires(meta, "vllm")
    assert str(vllm["torch"]).startswith("=="), "vllm no longer pins torch exactly: revisit the GPU set"
    checked = 0
    for name, version in pins.items():
        if name in vllm:
            assert vllm[name].contains(version, prereleases=True), \
                f"requirements-gpu.txt pins {name}=={version}, but vllm {pins['vllm']} requires {name}{vllm[name]}"
            checked += 1
    assert checked >= 5  # torch, transformers, tokenizers, safetensors, psutil, ...
    assert SpecifierSet(meta["vllm"]["Requires-Python"]).contains(GPU_PYTHON)


def test_megatron_core_pin_fits_setup_bound_and_torch(meta, pins):
    kw = _setup_kwargs()
    bound = {canonicalize_name(Requirement(r).name): Requirement(r) for r in kw["install_requires"]}
    mc = bound["megatron-core"]
    assert mc.specifier.contains(pins["megatron-core"]), f"setup.py {mc} excludes the GPU pin"
    assert mc.specifier.contains("0.16.1"), f"setup.py {mc} excludes the CPU pin (requirements-cpu.txt)"
    assert any(s.operator == "<" for s in mc.specifier), "setup.py needs an upper bound on megatron-core"
    assert _wheel_requires(meta, "megatron-core")["torch"].contains(pins["torch"])
    assert SpecifierSet(meta["megatron-core"]["Requires-Python"]).contains(GPU_PYTHON)
    cpu = _requirements("requirements-cpu.txt")
    assert mc.specifier.contains(_pinned(cpu["megatron-core"]))


def test_transformer_engine_builds_against_the_torch_pin(meta, pins):
    te = _requirements("requirements-gpu-te.txt")["transformer-engine"]
    assert "pytorch" in te.extras, "requirements-gpu-te.txt must install TE's PyTorch part (extra 'pytorch')"
    te_reqs = _wheel_requires(meta, "transformer-engine", extras=sorted(canonicalize_name(e) for e in te.extras))
    assert te_reqs["transformer-engine-torch"].contains(_pinned(te))
    core = [n for n in te_reqs if n.startswith("transformer-engine-cu")]
    assert len(core) == 1, f"choose exactly one TE core (CUDA) extra, got {core}"
    tet = meta["transformer-engine-torch"]
    assert tet["Version"] == _pinned(te)
    build_torch = next(Requirement(r) for r in tet["build-requires"] if r.startswith("torch"))
    assert build_torch.specifier.contains(pins["torch"])
    # vllm's CUDA-13 kernels (cu13 extras) and TE's core must agree on the CUDA major version
    vllm_cuda = {e for line in meta["vllm"]["Requires-Dist"] for e in Requirement(line).extras if e.startswith("cu")}
    assert vllm_cuda == {core[0].rsplit("-", 1)[1]}, f"vllm uses {vllm_cuda}, TE core is {core[0]}"


def test_setup_gpu_extra_equals_the_pins(pins):
    extra = [Requirement(r) for r in _setup_kwargs()["extras_require"]["gpu"]]
    assert extra, "setup.py has no gpu extra"
    for r in extra:
        name = canonicalize_name(r.name)
        assert name in pins, f"setup.py gpu extra has {r}, which requirements-gpu.txt does not pin"
        assert _pinned(r) == pins[name], f"setup.py gpu extra {r} != requirements-gpu.txt {name}=={pins[name]}"
    assert {"vllm", "torch", "megatron-core", "transformers"} <= {canonicalize_name(r.name) for r in extra}


def test_dockerfile_base_image_matches_the_vllm_pin(pins):
    with open(os.path.join(ROOT, "docker", "Dockerfile")) as f:
        text = f.read()
    base = next(line.split()[1] for line in text.splitlines() if line.startswith("ARG VLLM_IMAGE="))
    assert base.split("=", 1)[1] == f"vllm/vllm-openai:v{pins['vllm']}"
    assert "--no-build-isolation" in text and "requirements-gpu-te.txt" in text
