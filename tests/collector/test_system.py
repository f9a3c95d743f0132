"""Host statistics: psutil readings, and the NVML path with a stand-in library.

No NVIDIA GPU is expected on a test machine, so the GPU path runs against a
small ``pynvml`` module written to a temporary directory: it plays the driver
library, while the sampler under test is the real one.
"""

from __future__ import annotations

import logging
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from metricstream.collector import SystemSampler

_FAKE_NVML = """
class _Rates:
    def __init__(self, gpu):
        self.gpu = gpu

class _Memory:
    def __init__(self, used, total):
        self.used, self.total = used, total

FAIL_INIT = {fail_init}
FAIL_READ = {fail_read}
shutdowns = []

def nvmlInit():
    if FAIL_INIT:
        raise RuntimeError("NVML Shared Library Not Found")

def nvmlDeviceGetCount():
    return 2

def nvmlDeviceGetHandleByIndex(index):
    return index

def nvmlDeviceGetUtilizationRates(handle):
    if FAIL_READ:
        raise RuntimeError("GPU is lost")
    return _Rates([30, 50][handle])

def nvmlDeviceGetMemoryInfo(handle):
    return _Memory([1, 3][handle] * 2**30, 8 * 2**30)

def nvmlShutdown():
    shutdowns.append(True)
"""


@pytest.fixture
def nvml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    def install(*, fail_init: bool = False, fail_read: bool = False) -> None:
        source = _FAKE_NVML.format(fail_init=fail_init, fail_read=fail_read)
        (tmp_path / "pynvml.py").write_text(textwrap.dedent(source))
        monkeypatch.syspath_prepend(str(tmp_path))
        monkeypatch.delitem(sys.modules, "pynvml", raising=False)

    yield install
    sys.modules.pop("pynvml", None)


def test_psutil_readings_are_percentages_and_counters() -> None:
    sampler = SystemSampler()
    sample = sampler.sample()
    for value in (sample.cpu_usage, sample.memory_usage, sample.disk_usage):
        assert 0.0 <= value <= 100.0
    assert sample.network_in_bytes >= 0
    assert sample.network_out_bytes >= 0
    sampler.close()


def test_without_nvml_gpu_fields_are_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes the import fail, as on a machine without it.
    monkeypatch.setitem(sys.modules, "pynvml", None)
    sampler = SystemSampler()
    assert not sampler.has_gpu
    sample = sampler.sample()
    assert (sample.gpu_usage, sample.gpu_memory_usage) == (None, None)


def test_gpus_are_averaged_through_nvml(nvml: Callable[..., None]) -> None:
    nvml()
    sampler = SystemSampler()
    assert sampler.has_gpu
    sample = sampler.sample()
    assert sample.gpu_usage == 40.0  # (30 + 50) / 2
    assert sample.gpu_memory_usage == 25.0  # 4 GiB of 16 GiB
    sampler.close()
    assert sys.modules["pynvml"].shutdowns == [True]


def test_nvml_that_fails_to_start_leaves_gpu_absent(
    nvml: Callable[..., None], caplog: pytest.LogCaptureFixture
) -> None:
    nvml(fail_init=True)
    caplog.set_level(logging.INFO)
    sampler = SystemSampler()
    assert not sampler.has_gpu
    assert sampler.sample().gpu_usage is None
    assert "NVML unavailable" in caplog.text


def test_nvml_read_failure_disables_gpu_fields(
    nvml: Callable[..., None], caplog: pytest.LogCaptureFixture
) -> None:
    nvml(fail_read=True)
    sampler = SystemSampler()
    found = sampler.has_gpu
    assert sampler.sample().gpu_usage is None
    assert (found, sampler.has_gpu) == (True, False)
    assert "NVML read failed" in caplog.text
