"""Fixtures shared by the in-process megatron tests."""
import pytest


@pytest.fixture(scope="module")
def world1():
    """A world of one (gloo) in the test process; torn down (CPU shim included) afterwards."""
    from megatron_nft.megatron import cpu_shim, parallel

    info = parallel.init_distributed(1, 1, seed=0)
    yield info
    parallel.destroy()
    cpu_shim.deactivate()
