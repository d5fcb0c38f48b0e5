"""Peak memory per stretch of work: a reset starts a new high-water mark, so a stage is measured alone."""

from __future__ import annotations

import numpy as np
import pytest

from torchrec_onerec.peak_memory import peak_memory, reset_peak_memory


def test_a_reset_measures_the_work_after_it_alone() -> None:
    since_reset = reset_peak_memory()
    big = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
    peak = peak_memory(since_reset)
    assert float(peak["host_peak_mib"]) >= 64
    del big
    since_reset = reset_peak_memory()
    if not since_reset:
        pytest.skip("this OS does not let a process reset its resident-set high-water mark")
    after = peak_memory(since_reset)
    assert after["host_scope"] == "since_reset"
    assert float(after["host_peak_mib"]) < float(peak["host_peak_mib"]) - 32  # the freed array is not counted


def test_without_a_reset_the_process_peak_is_reported() -> None:
    assert peak_memory(False)["host_scope"] == "process"
