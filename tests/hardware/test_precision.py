"""The precision rule: forced by amp, fp32 where bf16 is emulated, else measured once and cached."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from comp.hardware import precision


def test_amp_true_and_false_force_it(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    never = lambda _: pytest.fail("measured")  # noqa: E731
    assert precision.choose(cpu, "false", work="w", measure=never)[0] is None
    assert precision.choose(cpu, "true", work="w", measure=never)[0] == torch.bfloat16


def test_auto_measures_once_per_machine_and_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cpu = torch.device("cpu")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(precision, "cpu_bf16", lambda: None)
    dtype, why = precision.choose(cpu, "auto", work="w", measure=lambda _: pytest.fail("x"))
    assert dtype is None and "no native bf16" in why

    monkeypatch.setattr(precision, "cpu_bf16", lambda: "avx512_bf16")
    calls: list[torch.dtype | None] = []

    def measure(dtype: torch.dtype | None) -> float:
        calls.append(dtype)
        return 1.0 if dtype is None else 0.5  # bf16 twice as fast

    dtype, why = precision.choose(cpu, "auto", work="w", measure=measure)
    assert dtype == torch.bfloat16 and "2.00x" in why and calls == [None, torch.bfloat16]
    again, _ = precision.choose(cpu, "auto", work="w", measure=measure)
    assert again == torch.bfloat16 and len(calls) == 2  # from the cache
    slower, why = precision.choose(cpu, "auto", work="other", measure=lambda d: 1.0)
    assert slower is None and "bf16 measured 1.00x" in why
    assert (tmp_path / "comp" / "precision.json").exists()
