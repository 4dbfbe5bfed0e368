"""The bad-input catalogue: each case through the real command line.

Every case must end with a non-zero exit, one line of error (``Error: ...``)
that names the file, row or option at fault, and nothing written: the
competition folder, the workspace and the home folder hold exactly the files
they held before, with the same sizes and times. Progress bars (cleared from the
terminal) and Kaggle's retry notices may come before the error line.

Readable images in odd modes are the other side of it: they are read, in the
right colours, and a competition made of them passes ``comp folds``.

With COMP_CATALOGUE=FILE set, each case appends ``case<TAB>message`` to FILE
(for the catalogue in the closing note).
"""

from __future__ import annotations

import errno
import json
import os
import re
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner, Result
from PIL import Image

from comp import cli as cli_module
from comp.cli import cli
from comp.config import load_config, to_dict
from comp.data.images import read_image
from comp.kaggle.client import Kaggle
from comp.workspace.init import init_workspace
from tests.conftest import TINY, make_kaggle
from tests.kaggle_standin import GOOD_TOKEN, KaggleStandIn

SLUG = "shapes"
CLASSES = ["circle", "square", "triangle"]
N_PER_CLASS, N_TEST = 6, 6
RUN_MODEL = "test_efficientnet"  # timm's tiny test net: a checkpoint in a few kB


@dataclass
class World:
    """A competition folder (as Kaggle ships it), a workspace around it, and a home folder."""

    tmp: Path
    data: Path
    ws: Path
    home: Path
    monkeypatch: pytest.MonkeyPatch
    server: KaggleStandIn | None = None
    stdout_ok: bool = False  # the command reports progress on stdout before it fails

    # --- the competition's files ---------------------------------------------------------

    @property
    def labels_csv(self) -> Path:
        return self.data / "train_labels.csv"

    def labels(self) -> pd.DataFrame:
        return pd.read_csv(self.labels_csv, dtype=str, keep_default_na=False)

    def write_labels(self, df: pd.DataFrame) -> None:
        df.to_csv(self.labels_csv, index=False)

    def train_image(self, row: int = 0) -> Path:
        return self.data / "train" / f"{self.labels()['Id'][row]}.png"

    def sample(self) -> pd.DataFrame:
        return pd.read_csv(self.data / "sample_submission.csv", dtype=str)

    def submission(self, df: pd.DataFrame | None = None, text: str | None = None) -> str:
        """Write a submission file into the workspace; return its path."""
        path = self.ws / "submissions" / "bad.csv"
        if text is not None:
            path.write_text(text)
        else:
            assert df is not None
            df.to_csv(path, index=False)
        return str(path)

    def good_submission(self) -> pd.DataFrame:
        solution = pd.read_csv(self.data / "solution.csv", dtype=str)
        return solution[["Id", "label"]].copy()

    def config(self, **changes: Any) -> None:
        """Change keys of comp.yaml in place."""
        path = self.ws / "comp.yaml"
        values = yaml.safe_load(path.read_text())
        values.update(changes)
        path.write_text(yaml.safe_dump(values, sort_keys=False))

    # --- runs, as `comp train` and `comp blend` leave them ---------------------------------

    def run(
        self,
        name: str,
        *,
        model: str = RUN_MODEL,
        classes: list[str] | None = None,
        nan: bool = False,
        raw: bytes | None = None,
    ) -> Path:
        """A trained run of one finished fold whose checkpoint is of ``model`` for ``classes``."""
        import torch

        from comp.models.factory import save_checkpoint

        run = self.ws / "runs" / name
        (run / "fold0").mkdir(parents=True)
        values = to_dict(load_config(self.ws))
        values.update(model=RUN_MODEL, img_size=16)
        (run / "config.yaml").write_text(yaml.safe_dump(values))
        (run / "classes.json").write_text(json.dumps(CLASSES))
        (run / "fold0" / "oof.csv").write_text("Id,label,fold\n")
        if raw is not None:
            (run / "fold0" / "best.pt").write_bytes(raw)
            return run
        import timm

        net = timm.create_model(model, pretrained=False, num_classes=len(classes or CLASSES))
        if nan:
            with torch.no_grad():
                for p in net.parameters():
                    p.fill_(float("nan"))
        save_checkpoint(
            run / "fold0" / "best.pt", net, {"model": model, "classes": classes or CLASSES}
        )
        return run

    def oof_run(self, name: str, bad: str | None = None) -> Path:
        """A run with out-of-fold probabilities, as `comp blend` reads it."""
        run = self.ws / "runs" / name
        run.mkdir(parents=True)
        labels = self.labels()
        rng = np.random.default_rng(len(name))
        probs = rng.dirichlet(np.ones(len(CLASSES)), len(labels)).round(6).astype(str)
        table = pd.DataFrame(probs, columns=CLASSES)
        if bad is not None:
            table.loc[2, "square"] = bad
        table.insert(0, "fold", [str(i % 2) for i in range(len(labels))])
        table.insert(0, "label", labels["label"])
        table.insert(0, "Id", labels["Id"])
        table.to_csv(run / "oof.csv", index=False)
        (run / "classes.json").write_text(json.dumps(CLASSES))
        (run / "config.yaml").write_text(yaml.safe_dump(to_dict(load_config(self.ws))))
        return run

    # --- Kaggle ----------------------------------------------------------------------------

    def kaggle(self) -> KaggleStandIn:
        assert self.server is not None, "a Kaggle case needs kaggle=True"
        return self.server


@dataclass
class Case:
    name: str
    setup: Callable[[World], list[str]]  # changes the world, returns the command line
    expect: str  # a regular expression the error message must match
    kaggle: bool = False


CASES: list[Case] = []


def case(name: str, expect: str, *, kaggle: bool = False) -> Callable[[Callable[..., Any]], Any]:
    def register(setup: Callable[[World], list[str]]) -> Callable[[World], list[str]]:
        CASES.append(Case(name, setup, expect, kaggle))
        return setup

    return register


# --- the labels CSV ------------------------------------------------------------------------

LABELS = r"train_labels\.csv: "


@case("labels: a missing column", LABELS + r"no column 'label' \(config key label_column\)")
def _(w: World) -> list[str]:
    w.write_labels(w.labels().rename(columns={"label": "kind"}))
    return ["folds"]


@case("labels: an empty file", LABELS + "file is empty")
def _(w: World) -> list[str]:
    w.labels_csv.write_text("")
    return ["folds"]


@case("labels: a header and no rows", LABELS + "no rows")
def _(w: World) -> list[str]:
    w.labels_csv.write_text("Id,label\n")
    return ["folds"]


@case("labels: duplicate Ids", LABELS + r"duplicate Id '[0-9a-f-]{36}' at row 20")
def _(w: World) -> list[str]:
    df = w.labels()
    w.write_labels(pd.concat([df, df.iloc[[4]]]))
    return ["folds"]


@case("labels: an empty label", LABELS + r"row 4 \(Id [0-9a-f-]{36}\) has an empty label")
def _(w: World) -> list[str]:
    df = w.labels()
    df.loc[2, "label"] = ""
    w.write_labels(df)
    return ["folds"]


@case("labels: a label of spaces", LABELS + r"row 5 \(Id [0-9a-f-]{36}\) has an empty label")
def _(w: World) -> list[str]:
    df = w.labels()
    df.loc[3, "label"] = "   "
    w.write_labels(df)
    return ["folds"]


@case("labels: NaN as a label", LABELS + r"row 3 \(Id .*\) has label 'NaN', a missing value")
def _(w: World) -> list[str]:
    df = w.labels()
    df.loc[1, "label"] = "NaN"
    w.write_labels(df)
    return ["folds"]


@case("labels: an empty Id", LABELS + "row 2 has an empty Id")
def _(w: World) -> list[str]:
    df = w.labels()
    df.loc[0, "Id"] = ""
    w.write_labels(df)
    return ["folds"]


@case("labels: a row with an extra field", LABELS + r"not a readable CSV \(.*line 4, saw 3\)")
def _(w: World) -> list[str]:
    lines = w.labels_csv.read_text().splitlines()
    lines[3] += ",extra"
    w.labels_csv.write_text("\n".join(lines) + "\n")
    return ["folds"]


@case("labels: not text", LABELS + r"not a readable CSV \(.*codec can't decode")
def _(w: World) -> list[str]:
    w.labels_csv.write_bytes(b"Id,label\n\xff\xfe\x00\x81,x\n")
    return ["folds"]


# --- images --------------------------------------------------------------------------------


@case("images: an Id with no image", r"train: no image for Id '[0-9a-f-]{36}' \(1 of 18\)")
def _(w: World) -> list[str]:
    w.train_image(5).unlink()
    return ["folds"]


@case("images: a truncated image", r"train/[0-9a-f-]{36}\.png: cannot read image \(")
def _(w: World) -> list[str]:
    path = w.train_image(1)
    path.write_bytes(path.read_bytes()[:60])
    return ["folds"]


@case("images: a zero-byte file", r"train/[0-9a-f-]{36}\.png: cannot read image \(")
def _(w: World) -> list[str]:
    w.train_image(2).write_bytes(b"")
    return ["folds"]


@case("images: text named .png", r"train/[0-9a-f-]{36}\.png: cannot read image \(")
def _(w: World) -> list[str]:
    w.train_image(3).write_text("<html>404 Not Found</html>")
    return ["folds"]


# --- the test set and the sample submission ---------------------------------------------------


@case(
    "test: an empty test folder",
    r"sample_submission\.csv: Ids do not match the test images; .*/test: no images in this "
    r"folder, but 6 Ids need one",
)
def _(w: World) -> list[str]:
    for p in (w.data / "test").iterdir():
        p.unlink()
    return ["folds"]


@case("test: an empty test folder, no sample submission", r"/test: no test images")
def _(w: World) -> list[str]:
    for p in (w.data / "test").iterdir():
        p.unlink()
    return ["folds", "--set", "sample_submission=null"]


@case(
    "sample submission: Ids that are not in test/",
    r"sample_submission\.csv: Ids do not match the test images; .*/test: no image for Id "
    r"'not-a-test-image' \(1 of 6\)",
)
def _(w: World) -> list[str]:
    sample = w.sample()
    sample.loc[0, "Id"] = "not-a-test-image"
    sample.to_csv(w.data / "sample_submission.csv", index=False)
    return ["folds"]


@case("sample submission: duplicate Ids", r"sample_submission\.csv: duplicate Id '.*' at row 4")
def _(w: World) -> list[str]:
    sample = w.sample()
    dup = sample.loc[1, "Id"]
    assert isinstance(dup, str)
    sample.loc[2, "Id"] = dup
    sample.to_csv(w.data / "sample_submission.csv", index=False)
    return ["folds"]


# --- folds ----------------------------------------------------------------------------------


@case(
    "folds: a class with fewer images than folds",
    r"1 class\(es\) have fewer images than the 2 folds: 'circle' \(1\)\. Lower --n-splits",
)
def _(w: World) -> list[str]:
    df = w.labels()
    circles = df.index[df["label"] == "circle"]
    w.write_labels(df.drop(circles[1:]))
    return ["folds"]


@case(
    "folds: more folds than images of a class",
    r"3 class\(es\) have fewer images than the 7 folds: .*Lower --n-splits",
)
def _(w: World) -> list[str]:
    return ["folds", "--n-splits", "7"]


# --- checkpoints ----------------------------------------------------------------------------

CKPT = r"runs/r/fold0/best\.pt: "


@case(
    "checkpoint: trained on another class set",
    CKPT + r"checkpoint was trained on other classes \(2 classes, expected 3",
)
def _(w: World) -> list[str]:
    w.run("r", classes=["circle", "square"])
    return ["predict", "r"]


@case("checkpoint: of another model", CKPT + "checkpoint is a test_resnet, expected " + RUN_MODEL)
def _(w: World) -> list[str]:
    w.run("r", model="test_resnet")
    return ["predict", "r"]


@case("checkpoint: not a checkpoint", CKPT + "not a comp checkpoint")
def _(w: World) -> list[str]:
    w.run("r", raw=b"not a checkpoint at all")
    return ["predict", "r"]


@case("checkpoint: a whole pickled model", CKPT + "not a comp checkpoint")
def _(w: World) -> list[str]:
    import timm
    import torch

    run = w.run("r", raw=b"")
    torch.save(timm.create_model(RUN_MODEL), run / "fold0" / "best.pt")
    return ["predict", "r"]


# --- NaN or inf in probabilities -------------------------------------------------------------


@case("probabilities: NaN from a broken checkpoint", r"runs/r: test probabilities hold NaN or inf")
def _(w: World) -> list[str]:
    w.run("r", nan=True)
    return ["predict", "r"]


OOF = r"runs/b/oof\.csv: row 4 \(Id [0-9a-f-]{36}\) has probability "


@case("probabilities: NaN in a run's OOF", OOF + r"'NaN' for class 'square', not a finite number")
def _(w: World) -> list[str]:
    w.oof_run("a")
    w.oof_run("b", bad="NaN")
    return ["blend", "a", "b", "--name", "ab"]


@case("probabilities: inf in a run's OOF", OOF + r"'inf' for class 'square', not a finite number")
def _(w: World) -> list[str]:
    w.oof_run("a")
    w.oof_run("b", bad="inf")
    return ["blend", "a", "b", "--name", "ab"]


@case("probabilities: an empty cell in a run's OOF", OOF + r"'nan' for class 'square'")
def _(w: World) -> list[str]:
    w.oof_run("a")
    w.oof_run("b", bad="")
    return ["blend", "a", "b", "--name", "ab"]


# --- submissions ----------------------------------------------------------------------------

SUB = r"submissions/bad\.csv: "


@case("submission: wrong header", SUB + "header is id,label, expected Id,label")
def _(w: World) -> list[str]:
    df = w.good_submission().rename(columns={"Id": "id"})
    return ["submit", w.submission(df), "--local"]


@case("submission: a row missing", SUB + "5 rows, expected 6")
def _(w: World) -> list[str]:
    return ["submit", w.submission(w.good_submission().iloc[:-1]), "--local"]


@case("submission: a row too many", SUB + "7 rows, expected 6")
def _(w: World) -> list[str]:
    df = w.good_submission()
    return ["submit", w.submission(pd.concat([df, df.iloc[[0]]])), "--local"]


@case(
    "submission: a label outside the class set",
    SUB + r"label 'hexagon' at row 3 is not a training class \(1 such rows\)",
)
def _(w: World) -> list[str]:
    df = w.good_submission()
    df.loc[1, "label"] = "hexagon"
    return ["submit", w.submission(df), "--local"]


@case("submission: duplicate Ids", SUB + r"duplicate Id '.*' at row 5")
def _(w: World) -> list[str]:
    df = w.good_submission()
    dup = df.loc[0, "Id"]
    assert isinstance(dup, str)
    df.loc[3, "Id"] = dup
    return ["submit", w.submission(df), "--local"]


@case("submission: an Id not in the sample", SUB + r"1 Id\(s\) not in the sample submission")
def _(w: World) -> list[str]:
    df = w.good_submission()
    df.loc[0, "Id"] = "elsewhere"
    return ["submit", w.submission(df), "--local"]


@case("submission: an empty Id", SUB + "empty Id at row 4")
def _(w: World) -> list[str]:
    df = w.good_submission()
    df.loc[2, "Id"] = ""
    return ["submit", w.submission(df), "--local"]


@case("submission: an empty label", SUB + "empty label at row 2")
def _(w: World) -> list[str]:
    df = w.good_submission()
    df.loc[0, "label"] = ""
    return ["submit", w.submission(df), "--local"]


@case("submission: an empty file", SUB + "file is empty")
def _(w: World) -> list[str]:
    return ["submit", w.submission(text=""), "--local"]


@case(
    "submission: no solution for --local",
    r"no solution file for local scoring \(config key solution: not set\)",
)
def _(w: World) -> list[str]:
    w.config(solution=None)
    return ["submit", w.submission(w.good_submission()), "--local"]


# --- configuration --------------------------------------------------------------------------


@case("config: comp.yaml is not YAML", r"comp\.yaml: not valid YAML at line \d+")
def _(w: World) -> list[str]:
    with open(w.ws / "comp.yaml", "a") as f:
        f.write("epochs: [3\nseed: 1\n")
    return ["folds"]


@case("config: comp.yaml is not a mapping", r"comp\.yaml: expected a mapping of key: value")
def _(w: World) -> list[str]:
    (w.ws / "comp.yaml").write_text("- epochs\n- 3\n")
    return ["folds"]


@case(
    "config: a mistyped key in comp.yaml",
    r"comp\.yaml: unknown key 'n_split'; did you mean 'n_splits'\?",
)
def _(w: World) -> list[str]:
    with open(w.ws / "comp.yaml", "a") as f:
        f.write("n_split: 3\n")
    return ["folds"]


@case("config: a mistyped key in --set", r"--set: unknown config key 'lr_2'; did you mean 'lr2'\?")
def _(w: World) -> list[str]:
    return ["folds", "--set", "lr_2=1e-3"]


@case("config: a value of the wrong type", r"config key 'n_splits' needs an int, got 'many'")
def _(w: World) -> list[str]:
    return ["folds", "--set", "n_splits=many"]


@case("config: a value out of range", "n_splits must be at least 2")
def _(w: World) -> list[str]:
    return ["folds", "--n-splits", "1"]


@case("config: no comp.yaml", r"no comp\.yaml in .* or its parents")
def _(w: World) -> list[str]:
    (w.ws / "comp.yaml").unlink()
    return ["folds"]


# --- Kaggle ---------------------------------------------------------------------------------

REFRESH = ["submissions", "--refresh"]


@case("kaggle: no token", r"no Kaggle credentials found: .*KAGGLE_API_TOKEN", kaggle=True)
def _(w: World) -> list[str]:
    w.monkeypatch.delenv("KAGGLE_API_TOKEN")
    return REFRESH


@case(
    "kaggle: an invalid token",
    r"Kaggle rejected the credentials from KAGGLE_API_TOKEN \(invalid or expired\)",
    kaggle=True,
)
def _(w: World) -> list[str]:
    w.monkeypatch.setenv("KAGGLE_API_TOKEN", "KGAT_revoked_0000")
    return REFRESH


@case("kaggle: kaggle.json is not JSON", r"\.kaggle/kaggle\.json is not valid JSON", kaggle=True)
def _(w: World) -> list[str]:
    w.monkeypatch.delenv("KAGGLE_API_TOKEN")
    path = w.home / ".kaggle" / "kaggle.json"
    path.write_text('{"username": "tester", "key": ')
    path.chmod(0o600)
    return REFRESH


@case(
    "kaggle: no competition named",
    r"which Kaggle competition\? pass --competition SLUG or set `competition:` in comp\.yaml",
    kaggle=True,
)
def _(w: World) -> list[str]:
    w.config(competition=None)
    return REFRESH


@case(
    "kaggle: an unknown competition",
    r"listing submissions of no-such-comp: not found on Kaggle \(HTTP 404\)",
    kaggle=True,
)
def _(w: World) -> list[str]:
    return [*REFRESH, "--competition", "no-such-comp"]


@case(
    "kaggle: HTTP 429 on every try",
    r"Kaggle is rate-limiting listing submissions of shapes \(HTTP 429\) after 2 tries",
    kaggle=True,
)
def _(w: World) -> list[str]:
    w.kaggle().fail("ListSubmissions", 429, times=5)
    return REFRESH


@case(
    "kaggle: HTTP 500 on every try",
    r"Kaggle failed listing submissions of shapes \(HTTP 500\) after 2 tries",
    kaggle=True,
)
def _(w: World) -> list[str]:
    w.kaggle().fail("ListSubmissions", 500, times=5)
    return REFRESH


@case(
    "kaggle: a timeout on every try",
    r"Kaggle did not answer listing submissions of shapes within 1s after 2 tries",
    kaggle=True,
)
def _(w: World) -> list[str]:
    w.kaggle().slow("ListSubmissions", 2.5, times=2)
    return REFRESH


@case(
    "kaggle: a submission rate-limited on every try",
    r"Kaggle is rate-limiting submitting bad\.csv to shapes \(HTTP 429\) after 2 tries",
    kaggle=True,
)
def _(w: World) -> list[str]:
    w.kaggle().fail("StartSubmissionUpload", 429, times=5)
    w.stdout_ok = True  # the quota comes first
    return ["submit", w.submission(w.good_submission())]


# --- a full disk ----------------------------------------------------------------------------


def full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every CSV written through a temporary file runs out of space halfway."""
    to_csv = pd.DataFrame.to_csv

    def half_then_enospc(self: pd.DataFrame, path: Any = None, *args: Any, **kwargs: Any) -> Any:
        if path is not None and str(path).endswith(".tmp"):
            Path(path).write_text("Id,label,fold\nhalf")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return to_csv(self, path, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_csv", half_then_enospc)


@case(
    "disk: full while writing the folds",
    r"folds/folds_k2_seed42\.csv: No space left on device; free some space",
)
def _(w: World) -> list[str]:
    full_disk(w.monkeypatch)
    w.stdout_ok = True  # the near-duplicate report comes first
    return ["folds"]


@case("disk: full while writing a blend", r"runs/ab/oof\.csv: No space left on device")
def _(w: World) -> list[str]:
    w.oof_run("a")
    w.oof_run("b")
    full_disk(w.monkeypatch)
    return ["blend", "a", "b", "--name", "ab"]


# --- comp init ----------------------------------------------------------------------------


@case(
    "init: labels whose Ids name no image",
    r"data: no labels CSV names the images in .*/data/train \(best: '\w+' of train_labels\.csv "
    r"matches 0%\); pass --set id_column=NAME",
)
def _(w: World) -> list[str]:
    df = w.labels()
    df["Id"] = [f"img{k}" for k in range(len(df))]
    w.write_labels(df)
    return ["init", str(w.tmp / "fresh"), "--data", str(w.data)]


@case("init: neither layout", r"/empty: neither a Kaggle layout .* nor an ImageFolder tree")
def _(w: World) -> list[str]:
    (w.tmp / "empty").mkdir()
    return ["init", str(w.tmp / "fresh"), "--data", str(w.tmp / "empty")]


# --- the machinery --------------------------------------------------------------------------


@pytest.fixture
def world(tmp_path: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    data = make_kaggle(tmp_path / "data", n_per_class=N_PER_CLASS, n_test=N_TEST)
    ws = tmp_path / "ws"
    init_workspace(ws, data, overrides={**TINY, "competition": SLUG})
    return World(tmp=tmp_path, data=data, ws=ws, home=isolated, monkeypatch=monkeypatch)


@pytest.fixture
def kaggle_for(world: World) -> Iterator[Callable[[], None]]:
    servers: list[KaggleStandIn] = []

    def start() -> None:
        server = KaggleStandIn().__enter__()
        servers.append(server)
        for k, v in server.env().items():
            world.monkeypatch.setenv(k, v)
        world.monkeypatch.setenv("KAGGLE_API_TOKEN", GOOD_TOKEN)
        server.add_competition(SLUG, world.data)
        world.server = server
        # Two quick tries, a short timeout: the retry logic is the same, the test is fast.
        world.monkeypatch.setattr(
            cli_module,
            "_kaggle",
            lambda: Kaggle(tries=2, backoff=0, timeout=1.0),
        )

    yield start
    for server in servers:
        server.__exit__(None, None, None)


def snapshot(*roots: Path) -> dict[str, tuple[int, int] | None]:
    """Every file (size, mtime) and folder under ``roots``; caches aside."""
    seen: dict[str, tuple[int, int] | None] = {}
    for root in roots:
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if "cache" not in d.lower()]
            seen[folder] = None
            for name in files:
                st = os.stat(os.path.join(folder, name))
                seen[os.path.join(folder, name)] = (st.st_size, st.st_mtime_ns)
    return seen


def temp_files(root: Path) -> list[str]:
    """Files that an atomic write (comp.files.atomic_path) had not yet published."""
    return sorted(str(p) for p in root.rglob("*.tmp"))


def visible_lines(stream: str) -> list[str]:
    """What stays on a terminal: the last state of each \\r-rewritten line, blanks dropped."""
    lines = (line.rsplit("\r", 1)[-1].strip() for line in stream.split("\n"))
    return [line for line in lines if line]


NOTICES = ("WARNING: ",)


def error_message(result: Result, *, stdout_ok: bool) -> str:
    """The one error line, after checking that nothing else but notices was said."""
    assert isinstance(result.exception, SystemExit), result.exc_info
    assert result.exit_code == 1
    shown = visible_lines(result.stderr)
    assert shown and shown[-1].startswith("Error: "), result.stderr
    assert all(line.startswith(NOTICES) for line in shown[:-1]), shown
    if not stdout_ok:
        assert result.stdout == "", result.stdout
    return shown[-1].removeprefix("Error: ")


@pytest.mark.parametrize("c", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_refused_in_one_line_and_writes_nothing(
    c: Case, world: World, kaggle_for: Callable[[], None]
) -> None:
    if c.kaggle:
        kaggle_for()
    args = c.setup(world)
    roots = (world.tmp,)  # the competition, the workspace, the home folder, any new folder
    before = snapshot(*roots)
    result = CliRunner().invoke(cli, ["-w", str(world.ws), *args])
    message = error_message(result, stdout_ok=world.stdout_ok)
    assert re.search(c.expect, message), message
    assert "\n" not in message and len(message) <= 600
    assert snapshot(*roots) == before, "the failed command wrote something"
    # Nor did it leave a half-written file behind, in the caches either.
    assert temp_files(world.tmp) == [], "the failed command left a half-written file"
    out = os.environ.get("COMP_CATALOGUE")
    if out:
        shown = message.replace(str(world.tmp), "<tmp>")
        with open(out, "a") as f:
            f.write(f"{c.name}\tcomp {' '.join(args).replace(str(world.tmp), '<tmp>')}\t{shown}\n")


# --- NaN at publication ---------------------------------------------------------------------


def test_publishing_nan_probabilities_is_refused_and_writes_nothing(world: World) -> None:
    from comp.data.competition import load_competition
    from comp.errors import DataError
    from comp.predict.predict import Prediction
    from comp.submit.submission import publish

    run = world.ws / "runs" / "k"
    run.mkdir(parents=True)
    comp = load_competition(world.ws, load_config(world.ws))
    ids = comp.test_ids()
    probs = np.full((len(ids), len(CLASSES)), 1 / len(CLASSES))
    probs[2, 1] = np.nan
    before = snapshot(world.ws)
    with pytest.raises(DataError, match="NaN or inf"):
        prediction = Prediction(
            run_dir=run,
            ids=ids,
            probs=probs,
            classes=CLASSES,
            sample=comp.sample,
            folds=["fold0"],
            tta=["none"],
        )
        publish(world.ws, prediction)
    assert snapshot(world.ws) == before


# --- a full disk, at the library level --------------------------------------------------------


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_a_full_disk_while_saving_a_checkpoint_keeps_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import timm
    import torch

    from comp.models.factory import save_checkpoint

    net = timm.create_model(RUN_MODEL, pretrained=False, num_classes=3)
    target = tmp_path / "fold0" / "best.pt"
    save_checkpoint(target, net, {"model": RUN_MODEL, "classes": CLASSES})
    good = target.read_bytes()
    save = torch.save

    def half_then_enospc(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        save(obj, f, *args, **kwargs)
        with open(f, "r+b") as handle:
            handle.truncate(100)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", half_then_enospc)
    with pytest.raises(OSError, match="No space left on device") as e:
        save_checkpoint(target, net, {"model": RUN_MODEL, "classes": CLASSES})
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(target)
    assert target.read_bytes() == good
    assert _leftovers(target.parent) == []
    fresh = tmp_path / "fold1" / "best.pt"
    with pytest.raises(OSError, match="No space left on device"):
        save_checkpoint(fresh, net, {"model": RUN_MODEL, "classes": CLASSES})
    assert not fresh.exists() and _leftovers(fresh.parent) == []


@pytest.mark.parametrize("kind", ["csv", "json", "text"])
def test_a_full_disk_while_writing_a_table_keeps_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    from comp import files

    target = tmp_path / f"out.{kind}"
    write: dict[str, Callable[[], None]] = {
        "csv": lambda: files.write_csv(target, pd.DataFrame({"Id": ["a", "b"], "p": [0.1, 0.9]})),
        "json": lambda: files.write_json(target, {"cv": 0.9}),
        "text": lambda: files.write_text(target, "x" * 1000),
    }
    target.write_text("the old one")
    if kind == "csv":
        full_disk(monkeypatch)
    else:
        real_fsync = os.fsync

        def enospc(fd: int) -> None:
            real_fsync(fd)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(os, "fsync", enospc)
    with pytest.raises(OSError) as e:
        write[kind]()
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(target)
    assert target.read_text() == "the old one"
    assert _leftovers(tmp_path) == []


# --- odd image modes are read, in the right colours ------------------------------------------


def _png16(path: Path, arr: np.ndarray) -> None:
    """A 16-bit PNG (grey or RGB) written by hand: PIL cannot write 48-bit RGB."""
    h, w = arr.shape[:2]
    colour_type = 2 if arr.ndim == 3 else 0
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def _cmyk(path: Path) -> None:
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(path, quality=100)  # pure red


def _grey16(path: Path) -> None:
    _png16(path, np.full((8, 8), 65535 // 4, np.uint16))  # a quarter of full scale


def _rgb16(path: Path) -> None:
    arr = np.zeros((8, 8, 3), np.uint16)
    arr[..., 0], arr[..., 1], arr[..., 2] = 65535, 32896, 2570
    _png16(path, arr)


def _palette(path: Path) -> None:
    img = Image.new("P", (8, 8), 1)
    img.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    img.putpixel((0, 0), 0)  # index 0 is transparent
    img.save(path, transparency=0)


def _la(path: Path) -> None:
    img = Image.new("LA", (8, 8), (100, 255))
    img.putpixel((0, 0), (100, 0))
    img.save(path)


def _rgba(path: Path) -> None:
    img = Image.new("RGBA", (8, 8), (255, 0, 0, 255))
    img.putpixel((0, 0), (255, 0, 0, 128))
    img.save(path)


def _exif(path: Path) -> None:
    """Red left half, blue right half, stored sideways with "rotate 90 clockwise" in EXIF."""
    img = Image.new("RGB", (10, 4), (255, 0, 0))
    img.paste((0, 0, 255), (5, 0, 10, 4))
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(path, exif=exif, quality=100)


def _bilevel(path: Path) -> None:
    img = Image.new("1", (8, 8), 1)
    img.putpixel((0, 0), 0)
    img.save(path)


# name: (writer, file name, pixel -> expected RGB)
MODES: dict[
    str, tuple[Callable[[Path], None], str, dict[tuple[int, int], tuple[int, int, int]]]
] = {
    "CMYK JPEG": (_cmyk, "x.jpg", {(3, 3): (255, 0, 0)}),
    "16-bit grey PNG": (_grey16, "x.png", {(3, 3): (64, 64, 64)}),
    "16-bit RGB PNG": (_rgb16, "x.png", {(3, 3): (255, 128, 10)}),
    "palette with transparency": (
        _palette,
        "x.png",
        {(0, 0): (255, 255, 255), (3, 3): (0, 0, 255)},
    ),
    "LA": (_la, "x.png", {(0, 0): (255, 255, 255), (3, 3): (100, 100, 100)}),
    "RGBA half transparent": (_rgba, "x.png", {(0, 0): (255, 127, 127), (3, 3): (255, 0, 0)}),
    "EXIF orientation": (_exif, "x.jpg", {(1, 1): (255, 0, 0), (8, 1): (0, 0, 255)}),
    "1-bit": (_bilevel, "x.png", {(0, 0): (0, 0, 0), (3, 3): (255, 255, 255)}),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_odd_modes_are_read_in_their_colours(tmp_path: Path, mode: str) -> None:
    write, name, expected = MODES[mode]
    write(tmp_path / name)
    arr = read_image(tmp_path / name)
    assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3
    if mode == "EXIF orientation":
        assert arr.shape[:2] == (10, 4)  # turned upright: 4 wide, 10 high
    for (y, x), colour in expected.items():
        assert np.abs(arr[y, x].astype(int) - colour).max() <= 3, (mode, arr[y, x], colour)


def test_a_competition_of_odd_modes_passes_folds(world: World) -> None:
    """CMYK, 16-bit, palette, LA and rotated images among the training images are accepted."""
    df = world.labels()
    writers = [m for m in MODES.values() if m[1].endswith(".png")][:4]
    for k, (write, _, _) in enumerate(writers):
        write(world.train_image(k))
    for k, writer in ((4, _cmyk), (5, _exif)):
        old = world.train_image(k)
        old.unlink()
        writer(old.with_suffix(".jpg"))
    assert len(df) == 3 * N_PER_CLASS
    result = CliRunner().invoke(cli, ["-w", str(world.ws), "folds"])
    assert result.exit_code == 0, result.output
    assert (world.ws / "folds" / "folds_k2_seed42.csv").exists()
