"""Host statistics: psutil for CPU, memory, disk and network; NVML for GPUs."""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import Any

__all__ = ["SystemSample", "SystemSampler"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SystemSample:
    """One reading of the host. Percentages are 0-100; GPU fields are ``None``
    when no NVIDIA GPU (or no NVML library) is present."""

    cpu_usage: float
    memory_usage: float
    disk_usage: float
    network_in_bytes: int
    network_out_bytes: int
    gpu_usage: float | None = None
    gpu_memory_usage: float | None = None


def _clamp_percent(value: float) -> float:
    return min(100.0, max(0.0, float(value)))


class SystemSampler:
    """Reads the host's load; each :meth:`sample` takes well under a millisecond
    of CPU but does file I/O, so the collector calls it from a worker thread.

    ``cpu_usage`` is the CPU use since the previous sample (psutil's
    non-blocking ``cpu_percent(interval=None)``); the constructor takes the
    first reference reading. Network counters are cumulative bytes since boot,
    summed over every interface.
    """

    def __init__(self, *, disk_path: str = "/") -> None:
        # Imported here: psutil comes with the ``server`` extra only (and ships
        # no type information, hence Any).
        psutil: Any = importlib.import_module("psutil")
        self._psutil = psutil
        self._disk_path = disk_path
        psutil.cpu_percent(interval=None)
        self._nvml: Any = None
        self._gpus: list[Any] = []
        self._open_nvml()

    @property
    def has_gpu(self) -> bool:
        """Whether NVML found at least one GPU."""
        return bool(self._gpus)

    def _open_nvml(self) -> None:
        # NVML is optional and never a dependency: the ``pynvml`` module (from
        # nvidia-ml-py) is used when installed and a driver answers.
        try:
            nvml = importlib.import_module("pynvml")
        except ImportError:
            logger.debug("pynvml not installed: GPU statistics disabled")
            return
        try:
            nvml.nvmlInit()
            count = int(nvml.nvmlDeviceGetCount())
            self._gpus = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except Exception as exc:  # NVMLError has no stable import path
            logger.info("NVML unavailable, GPU statistics disabled: %s", exc)
            self._gpus = []
            return
        self._nvml = nvml

    def _gpu(self) -> tuple[float | None, float | None]:
        if not self._gpus:
            return None, None
        nvml = self._nvml
        try:
            util = [float(nvml.nvmlDeviceGetUtilizationRates(h).gpu) for h in self._gpus]
            used = total = 0.0
            for handle in self._gpus:
                info = nvml.nvmlDeviceGetMemoryInfo(handle)
                used += float(info.used)
                total += float(info.total)
        except Exception as exc:
            logger.warning("NVML read failed, GPU statistics disabled: %s", exc)
            self._gpus = []
            return None, None
        memory = 100.0 * used / total if total > 0 else 0.0
        return _clamp_percent(sum(util) / len(util)), _clamp_percent(memory)

    def sample(self) -> SystemSample:
        """Read the host now."""
        psutil = self._psutil
        net = psutil.net_io_counters()
        try:
            disk = float(psutil.disk_usage(self._disk_path).percent)
        except OSError as exc:
            logger.warning("cannot read disk usage of %s: %s", self._disk_path, exc)
            disk = 0.0
        gpu, gpu_memory = self._gpu()
        return SystemSample(
            cpu_usage=_clamp_percent(psutil.cpu_percent(interval=None)),
            memory_usage=_clamp_percent(psutil.virtual_memory().percent),
            disk_usage=_clamp_percent(disk),
            network_in_bytes=int(net.bytes_recv) if net is not None else 0,
            network_out_bytes=int(net.bytes_sent) if net is not None else 0,
            gpu_usage=gpu,
            gpu_memory_usage=gpu_memory,
        )

    def close(self) -> None:
        """Release NVML, if it was opened."""
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception as exc:
                logger.debug("nvmlShutdown failed: %s", exc)
            self._nvml = None
            self._gpus = []
