"""`serve` without --workers: half the cores the process may use, at least one (api.serving.default_workers)."""

from __future__ import annotations

import os

import pytest

from territoire_data.api import serving


@pytest.mark.parametrize(("cores", "expected"), [(1, 1), (2, 1), (3, 1), (4, 2), (8, 4), (64, 32)])
def test_half_the_usable_cores_at_least_one(monkeypatch: pytest.MonkeyPatch, cores: int, expected: int) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(cores)), raising=False)
    assert serving.default_workers() == expected


def test_without_affinity_the_core_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert serving.default_workers() == 3
