"""comp.runs: the one owner of a run's folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from comp.config import Config, to_dict
from comp.errors import ConfigError, DataError
from comp.files import write_yaml
from comp.runs import read_config, resume_config


def test_resume_config_reads_the_runs_own_config_and_refuses_what_it_cannot_honour(
    tmp_path: Path,
) -> None:
    cfg = Config(epochs=3, seed=7)
    write_yaml(tmp_path / "runs" / "a" / "config.yaml", to_dict(cfg))
    assert resume_config(tmp_path, "a", overrides={}) == read_config(tmp_path / "runs" / "a")
    assert resume_config(tmp_path, "a", overrides={}).epochs == 3
    with pytest.raises(ConfigError, match="needs --name"):
        resume_config(tmp_path, None, overrides={})
    with pytest.raises(ConfigError, match="drop epochs, lr"):
        resume_config(tmp_path, "a", overrides={"lr": 0.1, "epochs": 5})
    with pytest.raises(DataError, match="no run b"):
        resume_config(tmp_path, "b", overrides={})
