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


def test_no_module_but_runs_spells_a_run_files_name() -> None:
    # Every reader and writer of a run's files names them through comp.runs, so a file is
    # renamed in one place. kernels/script.py runs alone on Kaggle, without comp imported.
    import ast

    import comp
    from comp import runs

    names = {
        v for k, v in vars(runs).items() if k.endswith(("_FILE", "_DIR")) and isinstance(v, str)
    }
    package = Path(comp.__file__).parent
    spelled = []
    for path in sorted(package.rglob("*.py")):
        if path.name == "runs.py" or path.relative_to(package).as_posix() == "kernels/script.py":
            continue
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
        }
        spelled += [
            f"{path.relative_to(package)}:{node.lineno} {node.value!r}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
            and (node.value in names or node.value.rsplit("/", 1)[-1] in names)
        ]
    assert not spelled, "\n".join(spelled)
