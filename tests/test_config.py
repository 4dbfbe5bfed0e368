import typing
from pathlib import Path
from typing import Literal

import pytest
import yaml

from comp.config import (
    CONFIG_FILE,
    Config,
    coerce,
    find_workspace,
    load_config,
    make_config,
    parse_duration,
    parse_sets,
    render,
    to_dict,
    write_workspace_config,
)
from comp.errors import ConfigError

# Found from the types, not listed: a key that gains a Literal is tested without a line here.
CHOICES = {
    key: typing.get_args(typ)
    for key, typ in typing.get_type_hints(Config).items()
    if typing.get_origin(typ) is Literal
}


def test_the_defaults_are_valid_and_survive_comp_yaml(tmp_path: Path) -> None:
    cfg = make_config()  # validates: a default outside its own choices is refused here
    write_workspace_config(tmp_path / CONFIG_FILE, cfg, header="defaults")
    assert to_dict(load_config(tmp_path)) == to_dict(cfg)


@pytest.mark.parametrize(
    ("key", "raw", "value"),
    [
        ("epochs", "7", 7),
        ("lr1", "3e-4", 3e-4),
        ("amp", "false", "false"),
        ("amp", "yes", "true"),
        ("amp", True, "true"),
        ("amp", "auto", "auto"),
        ("solution", "null", None),
        ("pretrained", False, "false"),
    ],
)
def test_coerce_from_strings_and_yaml(key: str, raw: object, value: object) -> None:
    assert coerce(key, raw) == value


def test_unknown_key_suggests_the_right_name() -> None:
    with pytest.raises(ConfigError, match="did you mean 'freeze_epochs'"):
        coerce("freeze_epoch", 3)
    with pytest.raises(ConfigError, match="did you mean 'lr2'"):
        parse_sets(["lr_2=0.1"])


def test_bad_values_are_refused() -> None:
    with pytest.raises(ConfigError, match="'epochs' needs an int"):
        coerce("epochs", "many")
    with pytest.raises(
        ConfigError, match=r"freeze_epochs \(5\) must be between 0 and epochs \(3\)"
    ):
        make_config({"epochs": 3, "freeze_epochs": 5})
    with pytest.raises(ConfigError, match=r"aug 'lite' is not a preset.*did you mean 'light'"):
        make_config({"aug": "lite"})
    with pytest.raises(ConfigError, match="device 'gpu' must be"):
        make_config({"device": "gpu"})
    with pytest.raises(ConfigError, match="--set expects key=value"):
        parse_sets(["epochs"])


def test_rendered_file_round_trips(tmp_path: Path) -> None:
    cfg = make_config({"model": "efficientnet_b0", "lr2": 2e-4, "solution": None})
    write_workspace_config(tmp_path / CONFIG_FILE, cfg, header="hello")
    text = (tmp_path / CONFIG_FILE).read_text()
    assert text.startswith("# hello") and "# any timm model name" in text
    assert load_config(tmp_path) == cfg
    # Keys the recipe fills read "auto" in the file, and load back as they were.
    assert make_config(yaml.safe_load(render(to_dict(cfg)))) == cfg
    assert yaml.safe_load(render(to_dict(cfg)))["epochs"] == "auto"


def test_overrides_beat_the_file_and_typos_in_the_file_are_named(tmp_path: Path) -> None:
    (tmp_path / CONFIG_FILE).write_text("epochs: 4\n")
    assert load_config(tmp_path, {"epochs": "9"}).epochs == 9
    (tmp_path / CONFIG_FILE).write_text("epochz: 4\n")
    with pytest.raises(
        ConfigError, match=r"comp.yaml: unknown key 'epochz'; did you mean 'epochs'"
    ):
        load_config(tmp_path)
    (tmp_path / CONFIG_FILE).write_text("epochs: [\n")
    with pytest.raises(ConfigError, match="not valid YAML at line 2"):
        load_config(tmp_path)


def test_find_workspace_walks_up(tmp_path: Path) -> None:
    (tmp_path / CONFIG_FILE).write_text("")
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert find_workspace(tmp_path / "a" / "b") == tmp_path.resolve()
    with pytest.raises(ConfigError, match="comp init"):
        find_workspace(Path("/"))


def test_every_key_has_help_and_section() -> None:
    import dataclasses

    for f in dataclasses.fields(Config):
        assert f.metadata["help"] and f.metadata["section"]


def test_the_choice_keys_are_typed() -> None:
    assert {"recipe", "head", "aug", "pipeline", "stage1", "bn", "amp", "loss"} <= set(CHOICES)


@pytest.mark.parametrize("key", sorted(CHOICES))
def test_a_choice_key_takes_its_choices_and_refuses_others(key: str) -> None:
    allowed = CHOICES[key]
    for value in allowed:
        assert getattr(make_config({key: value}), key) == value
    with pytest.raises(ConfigError) as refused:
        make_config({key: "bogus"})
    message = str(refused.value)
    assert message.startswith(f"{key} 'bogus' ") and ", ".join(allowed) in message


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("20m", 1200),
        ("1h30m", 5400),
        ("90s", 90),
        ("1.5h", 5400),
        ("15", 900),  # a bare number is minutes, as comp has always read it
        (" 1H30M ", 5400),
        ("1h 30m", 5400),
        ("1 hour", 3600),
        ("00:20:00", 1200),
    ],
)
def test_durations_in_several_formats(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "20x", "m20", "", "nan", "1d", "0m", "0s", "-5m", "1y"])
def test_what_is_no_duration_is_refused_by_the_key_it_came_from(text: str) -> None:
    with pytest.raises(ConfigError, match=rf"^time_limit '{text}' "):
        parse_duration(text)
    with pytest.raises(ConfigError, match=rf"^tune_time_limit '{text}' "):
        make_config({"tune_time_limit": text})
