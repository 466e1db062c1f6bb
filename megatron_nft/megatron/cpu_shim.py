"""All CPU workarounds needed to run megatron-core (local / SDPA layer specs) without CUDA.

megatron-core is written for GPUs: it allocates with ``device=torch.cuda.current_device()``
or a literal ``device="cuda"``, moves tensors with ``.cuda()``, synchronises streams and keeps
its dropout RNG streams in CUDA generators.  On a CPU-only box (CI, laptops) each of those
raises.  :func:`activate` patches exactly those spots, and only when CUDA is *not*
available, so the GPU code path is untouched.  It is idempotent and safe to call from every
entry point (``init_distributed`` calls it).

Patches (each one with the reason it exists):

1. ``torch.cuda.current_device`` -> ``torch.device("cpu")``: megatron passes its result as
   ``device=`` to factory functions (parameters, buffers, all-gather outputs, rotary
   frequencies).  Returning a CPU device makes all of them allocate on the CPU.
2. ``torch.cuda.synchronize`` / ``torch.cuda.empty_cache`` -> no-ops: called by timers,
   schedules and checkpointing; meaningless (and raising) without CUDA.
3. A CPU RNG tracker (:class:`CpuRNGStatesTracker`) replacing
   ``tensor_parallel.random.CudaRNGStatesTracker``: ``fork()`` (entered around every dropout
   and TP weight initialisation) swaps *CUDA* generator states.  Ours keeps named CPU
   generator states and swaps ``torch.get_rng_state``/``set_rng_state`` instead, so the
   model-parallel / data-parallel RNG streams semantics are kept.  The module-level
   ``_get_cuda_rng_state``/``_set_cuda_rng_state`` helpers (used by activation recomputation)
   are redirected to the CPU generator for the same reason.
4. A ``torch.overrides.TorchFunctionMode`` (:class:`_CpuDeviceMode`) that rewrites
   ``device="cuda"`` / ``torch.device("cuda")`` / integer device kwargs to ``"cpu"`` and
   turns ``Tensor.cuda()`` / ``Tensor.to("cuda")`` into CPU no-ops: megatron has literal
   ``device="cuda"`` (e.g. ``get_default_causal_mask``, ``tensor_parallel.data``) and
   ``weight.data.cuda()`` (tied embeddings with PP) that patch 1 cannot reach.  The mode is
   pushed once on the thread that calls :func:`activate`. Limits: modes are thread-local and
   are NOT active inside the autograd engine's backward pass (verified), so code that runs
   in backward (e.g. activation recomputation) must be covered by the other patches.
5. ``torch.cuda.current_stream`` / ``torch.cuda.default_stream`` / ``torch.cuda.Stream`` /
   ``torch.cuda.stream`` -> dummy objects: used by the pipeline schedules / checkpoint
   writers to record events and wait on streams.
6. ``get_default_causal_mask`` / ``get_sliding_window_causal_mask`` (megatron.core.transformer
   .utils, re-imported by fusions.fused_softmax) -> CPU versions. They hard-code
   ``device="cuda"`` and, with activation recomputation, run again during backward where the
   torch-function mode (patch 4) is not active (this is why an "explicit CPU causal mask" was
   needed before). Patching them makes ``attention_mask=None`` (implicit causal mask) work
   in every case, so callers need no explicit CPU mask.
7. (in the mode of patch 4) ``Tensor.type()`` called from ``megatron.core`` returns the CUDA type name
   (``torch.cuda.FloatTensor``): megatron's (distributed) optimizers and grad clipping select
   parameters by that string and reject CPU tensors otherwise.

Known limitation (not patched): sequence parallelism does not work on CPU.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading

import torch
from torch.overrides import TorchFunctionMode

log = logging.getLogger(__name__)

_ACTIVE = False
_LOCK = threading.Lock()
_MODE: "_CpuDeviceMode | None" = None
_SAVED: dict = {}  # (owner, attr) -> original value, for deactivate()

_CPU = torch.device("cpu")


def is_active() -> bool:
    """True once :func:`activate` has patched torch/megatron for CPU."""
    return _ACTIVE


def _is_cuda_device(dev) -> bool:
    if isinstance(dev, torch.device):
        return dev.type == "cuda"
    if isinstance(dev, str):
        return dev.startswith("cuda")
    # A bare int as device means cuda:<int> in torch factory functions.
    return isinstance(dev, int) and not isinstance(dev, bool)


class _CpuDeviceMode(TorchFunctionMode):
    """Maps CUDA device requests to the CPU (patch 4)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            # megatron's optimizers accept parameters by type *name* ("torch.cuda.FloatTensor");
            # answer with the CUDA name for megatron callers only (patch 7).
            name = func(*args)
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("megatron.core") and name.startswith("torch.") and ".cuda." not in name:
                return "torch.cuda." + name[len("torch."):]
            return name
        if func is torch.Tensor.to:
            args = tuple(_CPU if _is_cuda_device(a) and not isinstance(a, int) else a for a in args)
            # Tensor.to(int) means cuda:<int>; only rewrite ints in the first position
            if len(args) > 1 and isinstance(args[1], int) and not isinstance(args[1], bool):
                args = (args[0], _CPU) + tuple(args[2:])
        dev = kwargs.get("device")
        if dev is not None and _is_cuda_device(dev):
            kwargs = dict(kwargs)
            kwargs["device"] = _CPU
        return func(*args, **kwargs)


class _DummyStream:
    """Stand-in for ``torch.cuda.Stream`` (patch 5)."""

    def __init__(self, *args, **kwargs):
        pass

    def wait_stream(self, *args, **kwargs):
        pass

    def wait_event(self, *args, **kwargs):
        pass

    def record_event(self, *args, **kwargs):
        return None

    def synchronize(self):
        pass

    def query(self):
        return True


def _make_cpu_tracker_class(base):
    class CpuRNGStatesTracker(base):
        """megatron RNG tracker whose named states are CPU generator states (patch 3)."""

        def __init__(self, *args, **kwargs):
            kwargs.pop("use_cudagraphable_rng", None)
            kwargs.pop("is_inference_rng_tracker", None)
            self.use_cudagraphable_rng = False
            self.is_inference_rng_tracker = False
            self.reset()

        def add(self, name, seed):
            self._is_initialized = True
            if seed in self.seeds_:
                raise Exception(f"seed {seed} already exists")
            self.seeds_.add(seed)
            if name in self.states_:
                raise Exception(f"rng state {name} already exists")
            orig = torch.get_rng_state()
            torch.manual_seed(seed)
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(orig)

        @contextlib.contextmanager
        def fork(self, name="model-parallel-rng"):
            if name not in self.states_:
                raise Exception(f"rng state {name} is not added")
            orig_state = torch.get_rng_state()
            orig_name = self._current_state_name
            if orig_name != "default-rng":
                self.states_[orig_name] = orig_state
            torch.set_rng_state(self.states_[name])
            self._current_state_name = name
            try:
                yield
            finally:
                self.states_[name] = torch.get_rng_state()
                if orig_name != "default-rng":
                    orig_state = self.states_[orig_name]
                torch.set_rng_state(orig_state)
                self._current_state_name = orig_name

    return CpuRNGStatesTracker


def _set(owner, attr: str, value) -> None:
    _SAVED.setdefault((owner, attr), getattr(owner, attr))
    setattr(owner, attr, value)


def _patch_rng() -> None:
    from megatron.core.tensor_parallel import random as mrandom

    base = mrandom.CudaRNGStatesTracker
    if getattr(base, "_nft_cpu", False):
        return
    cls = _make_cpu_tracker_class(base)
    cls._nft_cpu = True
    # initialize_rng_tracker() looks the class up in the module globals at call time, so
    # every tracker megatron creates from now on (also with force_reset) is the CPU one.
    _set(mrandom, "CudaRNGStatesTracker", cls)

    def _get_state(device="cuda", clone=False, graph_safe=False):
        return torch.get_rng_state()

    def _set_state(new_state, device=-1, graph_safe=False):
        torch.set_rng_state(new_state)

    _set(mrandom, "_get_cuda_rng_state", _get_state)
    _set(mrandom, "_set_cuda_rng_state", _set_state)
    # A tracker created before activation (unlikely) is replaced by a CPU one.
    if mrandom._CUDA_RNG_STATE_TRACKER is not None and not isinstance(
        mrandom._CUDA_RNG_STATE_TRACKER, cls
    ):
        mrandom._CUDA_RNG_STATE_TRACKER = cls()


def _patch_masks() -> None:
    from megatron.core.fusions import fused_softmax
    from megatron.core.transformer import utils as tutils

    def get_default_causal_mask(sq: int) -> torch.Tensor:
        return torch.triu(torch.ones(sq, sq, dtype=torch.bool, device=_CPU), diagonal=1)

    def get_sliding_window_causal_mask(sq, skv, window_size):
        m = torch.ones(sq, skv, dtype=torch.bool, device=_CPU)
        mu = torch.triu(m, diagonal=skv - sq - window_size[0])
        return ~torch.tril(mu, diagonal=skv - sq + window_size[1])

    for mod in (tutils, fused_softmax):
        if hasattr(mod, "get_default_causal_mask"):
            _set(mod, "get_default_causal_mask", get_default_causal_mask)
        if hasattr(mod, "get_sliding_window_causal_mask"):
            _set(mod, "get_sliding_window_causal_mask", get_sliding_window_causal_mask)


def _patch_torch_cuda() -> None:
    _set(torch.cuda, "current_device", lambda: _CPU)
    _set(torch.cuda, "synchronize", lambda *a, **k: None)
    _set(torch.cuda, "empty_cache", lambda *a, **k: None)
    _set(torch.cuda, "current_stream", lambda *a, **k: _DummyStream())
    _set(torch.cuda, "default_stream", lambda *a, **k: _DummyStream())
    _set(torch.cuda, "Stream", _DummyStream)
    _set(torch.cuda, "stream", lambda *a, **k: contextlib.nullcontext())
    # torch.cuda.manual_seed is lazily queued without CUDA (harmless); seed the CPU as well.
    _orig_manual_seed = torch.cuda.manual_seed

    def _manual_seed(seed):
        torch.manual_seed(seed)
        with contextlib.suppress(Exception):
            _orig_manual_seed(seed)

    _set(torch.cuda, "manual_seed", _manual_seed)


def activate(force: bool = False) -> bool:
    """Patch torch + megatron-core for CPU execution when CUDA is unavailable.

    Idempotent. Returns True when the shim is active after the call. ``force=True`` activates
    even if CUDA is available (tests only).
    """
    global _ACTIVE, _MODE
    with _LOCK:
        if _ACTIVE:
            return True
        if torch.cuda.is_available() and not force:
            return False
        _patch_torch_cuda()
        _patch_rng()
        _patch_masks()
        _MODE = _CpuDeviceMode()
        _MODE.__enter__()  # pushed for the rest of the process (on this thread)
        _ACTIVE = True
        log.debug("megatron-nft CPU shim active")
        return True


def deactivate() -> None:
    """Undo :func:`activate` (tests: keeps the shim from leaking into unrelated tests).

    Restores every patched attribute and pops the device mode; megatron's RNG tracker is
    reset so the next user re-creates it.
    """
    global _ACTIVE, _MODE
    with _LOCK:
        if not _ACTIVE:
            return
        if _MODE is not None:
            _MODE.__exit__(None, None, None)
            _MODE = None
        for (owner, attr), value in _SAVED.items():
            setattr(owner, attr, value)
        _SAVED.clear()
        try:
            from megatron.core.tensor_parallel import random as mrandom

            mrandom._CUDA_RNG_STATE_TRACKER = None
            mrandom._CUDA_RNG_STATE_TRACKER_INITIALIZED = False
        except ImportError:
            pass
        _ACTIVE = False


def device() -> torch.device:
    """The device megatron modules live on in this process."""
    if _ACTIVE or not torch.cuda.is_available():
        return _CPU
    return torch.device("cuda", torch.cuda.current_device())
