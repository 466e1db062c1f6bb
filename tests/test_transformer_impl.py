"""``model.transformer_impl: auto`` resolves through ``transformer_engine.pytorch``. TE and CUDA
cannot exist on this CPU machine, so both are mocked: CUDA through ``torch.cuda.is_available``,
TE as a ``transformer_engine`` package whose ``pytorch`` part fails to load its extension the way
a TE built against another torch does (``import transformer_engine`` itself still succeeds,
TE swallows that error; ../shared/DESIGN.md)."""
import sys
import types

import pytest
import torch

from megatron_nft.megatron.policy import resolve_transformer_impl


@pytest.fixture
def fake_te(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    te = types.ModuleType("transformer_engine")
    te.__path__ = []  # a package: `import transformer_engine.pytorch` goes through the finder below
    monkeypatch.setitem(sys.modules, "transformer_engine", te)
    monkeypatch.delitem(sys.modules, "transformer_engine.pytorch", raising=False)
    return te


def test_auto_is_sdpa_when_te_pytorch_does_not_load(fake_te, monkeypatch):
    class Finder:
        def find_spec(self, name, path=None, target=None):
            if name == "transformer_engine.pytorch":
                raise OSError("libtransformer_engine.so: undefined symbol (built against another torch)")
            return None

    monkeypatch.setattr(sys, "meta_path", [Finder(), *sys.meta_path])
    import transformer_engine  # noqa: F401  (the top level imports: the old probe said "TE present")

    assert resolve_transformer_impl("auto") == "sdpa"


def test_auto_is_transformer_engine_when_te_pytorch_loads(fake_te, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformer_engine.pytorch", types.ModuleType("transformer_engine.pytorch"))
    assert resolve_transformer_impl("auto") == "transformer_engine"


def test_auto_on_cpu_and_explicit_choices():
    if not torch.cuda.is_available():
        assert resolve_transformer_impl("auto") == "local"
    for impl in ("local", "sdpa", "transformer_engine"):
        assert resolve_transformer_impl(impl) == impl
