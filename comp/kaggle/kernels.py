"""Kaggle kernels: bundles that train on Kaggle's GPUs, and their outputs brought home as runs.

Reads the workspace config, its folds CSV and comp's own source. Writes one
bundle per kernel under ``kernels/<name>/`` (``kernel-metadata.json``, the
script, and ``comp-kernel.json`` with what comp needs to find the kernel again),
the code dataset folder ``kernels/_dataset/<slug>/``, and, when outputs are
pulled, the run folder ``runs/<name>/`` exactly as a local ``comp train``
would have written it.

The script is self-contained: it carries the resolved config, the folds and
(unless a code dataset is attached) comp's source as one embedded zip, so a
kernel trains on exactly the split and settings of the workspace. It holds no
credentials: a kernel needs none, and nothing secret is ever read here.
"""

from __future__ import annotations

import base64
import io
import json
import os
import pprint
import re
import shutil
import tempfile
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

import comp
from comp import files
from comp.config import Config, to_dict
from comp.data.competition import load_competition, read_csv, resolve
from comp.errors import ConfigError, DataError
from comp.folds.split import folds_path
from comp.runs import read_classes

KERNEL_METADATA = "kernel-metadata.json"
# Tables the kernel carries in its payload rather than reads from the data folder.
CARRIED = "carried"
DATASET_METADATA = "dataset-metadata.json"
INFO = "comp-kernel.json"
PATH_KEYS = ("train_csv", "train_dir", "test_dir", "sample_submission")
# Kaggle's limit is on the whole script; beyond this a code dataset is the better carrier.
MAX_SCRIPT_BYTES = 1_000_000


def slugify(text: str) -> str:
    """Kaggle's slug of a title: lower case, runs of anything else as one dash."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def source_files() -> list[Path]:
    package = Path(comp.__file__).parent
    return sorted(p for p in package.rglob("*.py") if "__pycache__" not in p.parts)


def _zip(contents: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in sorted(contents.items()):
            # A fixed timestamp keeps the script identical for identical inputs.
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, data)
    return buf.getvalue()


def data_layout(root: Path, cfg: Config) -> tuple[dict[str, str | None], dict[str, Path]]:
    """Where each data path of comp.yaml will be in a kernel.

    Returns the paths relative to the data folder as Kaggle mounts it, and the
    tables that ``comp init`` made in the workspace itself (an ImageFolder's
    labels, a hold-out), which the kernel has to carry along.
    """
    paths = {k: resolve(root, getattr(cfg, k)) for k in PATH_KEYS}
    ws = root.resolve()
    carried = {
        k: p.resolve()
        for k, p in paths.items()
        if p is not None and p.is_file() and p.resolve().parent == ws
    }
    folders = [
        p.resolve() if p.is_dir() else p.resolve().parent
        for k, p in paths.items()
        if p is not None and k not in carried
    ]
    if not folders:
        raise ConfigError("comp.yaml names no data folder for a kernel to read")
    base = Path(os.path.commonpath(folders))
    if base == Path(base.anchor) or base == ws or ws.is_relative_to(base):
        raise ConfigError(
            "the data paths of comp.yaml do not share a competition folder "
            f"({', '.join(str(p) for p in folders)}); a kernel needs the competition's own layout"
        )
    layout: dict[str, str | None] = {}
    for k, p in paths.items():
        if p is None:
            layout[k] = None
        elif k in carried:
            layout[k] = f"{CARRIED}/{p.name}"
        else:
            layout[k] = p.resolve().relative_to(base).as_posix()
    return layout, carried


def kernel_groups(
    n_splits: int, folds: list[int] | None, per_kernel: int | None
) -> list[list[int]]:
    chosen = folds if folds else list(range(n_splits))
    for k in chosen:
        if not 0 <= k < n_splits:
            raise ConfigError(f"--fold {k}: folds are 0..{n_splits - 1}")
    if not per_kernel:
        return [chosen]
    if per_kernel < 1:
        raise ConfigError("--folds-per-kernel must be at least 1")
    return [chosen[i : i + per_kernel] for i in range(0, len(chosen), per_kernel)]


def build_bundles(
    root: Path,
    cfg: Config,
    *,
    name: str,
    owner: str,
    competition: str | None,
    data_dataset: str | None = None,
    folds: list[int] | None = None,
    folds_per_kernel: int | None = None,
    code_dataset: str | None = None,
    gpu: bool = True,
    internet: bool = True,
    private: bool = True,
    accelerator: str | None = None,
) -> list[Path]:
    """Write the bundle(s) of kernel group ``name``; return their folders.

    The data come from the competition, or from ``data_dataset`` (a Kaggle
    dataset such as Animals-10) when there is no competition.
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ConfigError(f"kernel name '{name}': use letters, digits, '-', '_' and '.'")
    data_ref = data_dataset or competition
    if not data_ref:
        raise ConfigError(
            "where are the data on Kaggle? pass --competition SLUG (or set competition: in "
            "comp.yaml), or --data-dataset OWNER/SLUG"
        )
    if cfg.pretrained_file and not code_dataset:
        raise ConfigError(
            f"pretrained_file {cfg.pretrained_file} is on this machine, not on Kaggle: "
            "put it in a code dataset with `comp kernel dataset --weights FILE` and push with --code-dataset"
        )
    fold_file = folds_path(root, cfg)
    if not fold_file.exists():
        raise DataError(f"{fold_file}: no folds yet; run `comp folds` first")
    layout, carried = data_layout(root, cfg)
    values = to_dict(cfg)
    values.update(layout)
    values.update(solution=None, competition=competition, device="auto")
    if cfg.pretrained_file:
        values["pretrained_file"] = Path(cfg.pretrained_file).name

    contents = {f"folds/{fold_file.name}": fold_file.read_bytes()}
    contents.update({f"{CARRIED}/{p.name}": p.read_bytes() for p in carried.values()})
    if not code_dataset:
        package = Path(comp.__file__).parent
        contents.update(
            {f"comp/{p.relative_to(package).as_posix()}": p.read_bytes() for p in source_files()}
        )
    payload = base64.b64encode(_zip(contents)).decode()

    groups = kernel_groups(cfg.n_splits, folds, folds_per_kernel)
    fan_out = len(groups) > 1 or groups[0] != list(range(cfg.n_splits))
    plans = []
    for group in groups:
        suffix = f" fold {'-'.join(map(str, group))}" if fan_out else ""
        title = f"comp {name}{suffix}"
        slug = slugify(title)
        if len(slug) > 50:
            raise ConfigError(
                f"kernel slug '{slug}' is longer than Kaggle's 50 characters; pick a shorter --name"
            )
        plans.append((group, title, slug))

    # Written aside and swapped in whole, so a failure never costs the bundles already there.
    group_dir = root / "kernels" / name
    group_dir.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=group_dir.parent))
    try:
        for group, title, slug in plans:
            where = f"fold{'-'.join(map(str, group))}" if fan_out else ""
            bundle = building / where
            script = render_script(
                run=name,
                folds=group if fan_out else None,
                config=values,
                data_ref=data_ref,
                code_dataset=code_dataset,
                payload=payload,
            )
            if len(script.encode()) > MAX_SCRIPT_BYTES:
                raise ConfigError(
                    f"the kernel script would be {len(script) // 1000} kB; upload comp with "
                    "`comp kernel dataset` and push with --code-dataset"
                )
            metadata: dict[str, Any] = {
                "id": f"{owner}/{slug}",
                "title": title,
                "code_file": f"{slug}.py",
                "language": "python",
                "kernel_type": "script",
                "is_private": private,
                "enable_gpu": gpu,
                "enable_tpu": False,
                "enable_internet": internet,
                "dataset_sources": [d for d in (data_dataset, code_dataset) if d],
                "competition_sources": [competition] if competition and not data_dataset else [],
                "kernel_sources": [],
                "model_sources": [],
            }
            if accelerator:
                metadata["machine_shape"] = accelerator
            files.write_text(bundle / f"{slug}.py", script)
            files.write_json(bundle / KERNEL_METADATA, metadata)
            files.write_json(
                bundle / INFO,
                {
                    "name": name,
                    "run": name,
                    "ref": f"{owner}/{slug}",
                    "folds": group,
                    "n_splits": cfg.n_splits,
                    "data": data_ref,
                    "comp_version": comp.__version__,
                    "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                },
            )
        files.swap_dir(building, group_dir)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return [group_dir / (f"fold{'-'.join(map(str, g))}" if fan_out else "") for g, _, _ in plans]


def bundles_of(root: Path, name: str) -> list[Path]:
    group_dir = root / "kernels" / name
    found = sorted(p.parent for p in group_dir.rglob(INFO))
    if not found:
        known = sorted(p.parent.name for p in (root / "kernels").glob(f"*/{INFO}"))
        known += sorted(p.parent.parent.name for p in (root / "kernels").glob(f"*/*/{INFO}"))
        raise DataError(
            f"no kernel bundle '{name}' in {root / 'kernels'}; bundles are: {', '.join(sorted(set(known))) or 'none yet'}"
        )
    return found


def read_info(bundle: Path) -> dict[str, Any]:
    return dict(json.loads((bundle / INFO).read_text()))


def record_push(bundle: Path, pushed: dict[str, Any]) -> None:
    info = read_info(bundle)
    info.update(
        url=pushed.get("url"),
        version=pushed.get("version"),
        pushed_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    files.write_json(bundle / INFO, info)


def import_output(root: Path, bundle: Path, pulled: Path) -> dict[str, Any]:
    """Move one kernel's downloaded output into ``runs/<run>/``, merging folds of other kernels."""
    info = read_info(bundle)
    run = info["run"]
    src = pulled / "runs" / run
    logs = sorted(pulled.glob("*.log"))
    if not (src / "config.yaml").exists():
        hint = f"; its log is {logs[0]}" if logs else ""
        raise DataError(f"kernel {info['ref']} produced no run '{run}'{hint}")
    dest = root / "runs" / run
    dest.mkdir(parents=True, exist_ok=True)
    for meta in ("config.yaml", "classes.json", "transforms.json"):
        mine, theirs = dest / meta, src / meta
        if mine.exists() and theirs.exists() and _settings(mine) != _settings(theirs):
            raise DataError(
                f"{dest} holds a different run ({meta} differs from kernel {info['ref']}'s); pick another name"
            )
        if theirs.exists() and not mine.exists():
            shutil.copy2(theirs, mine)
    folds = []
    for fold_dir in sorted(src.glob("fold*")):
        target = dest / fold_dir.name
        # Swap the whole fold in at once: never half old, half new.
        staging = dest / f".{fold_dir.name}.pulled"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(fold_dir, staging)
        old = dest / f".{fold_dir.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
        folds.append(fold_dir.name)
    if info["folds"] == list(range(info["n_splits"])) and (src / "test_probs.csv").exists():
        shutil.copy2(src / "test_probs.csv", dest / "test_probs.csv")
        for ext in (".csv", ".json"):
            made = pulled / "submissions" / f"{run}{ext}"
            if made.exists():
                (root / "submissions").mkdir(exist_ok=True)
                shutil.copy2(made, root / "submissions" / f"{run}{ext}")
    for log in logs:
        (dest / "logs").mkdir(exist_ok=True)
        shutil.copy2(log, dest / "logs" / log.name)
    return {"ref": info["ref"], "run": run, "folds": folds}


def combine_fan_out(
    root: Path, cfg: Config, run_dir: Path, *, n_splits: int
) -> dict[str, Any] | None:
    """Average the test probabilities of fanned-out kernels into the run's submission.

    Each kernel predicted with its own folds; weighting each by its number of
    folds gives exactly what `comp predict` over every fold would. None until
    the kernels together cover every fold once.
    """
    import numpy as np

    # torch only here, for a pulled run's predictions: pushing a kernel needs none.
    from comp.predict.predict import publish

    parts = sorted(run_dir.glob("fold*/test_probs_folds*.csv"))
    covered = [[int(k) for k in p.stem.removeprefix("test_probs_folds").split("-")] for p in parts]
    if sorted(k for group in covered for k in group) != list(range(n_splits)):
        return None
    classes = read_classes(run_dir)
    total = None
    ids: list[str] = []
    for path, group in zip(parts, covered, strict=True):
        table = read_csv(path)
        if total is None:
            ids = list(table["Id"])
            total = np.zeros((len(ids), len(classes)))
        elif list(table["Id"]) != ids:
            raise DataError(f"{path}: the kernels predicted different test Ids")
        total += table[classes].to_numpy(np.float64) * len(group)
    assert total is not None
    trained = yaml.safe_load((run_dir / "config.yaml").read_text())
    return publish(
        root,
        run_dir,
        ids=ids,
        probs=total / n_splits,
        classes=classes,
        sample=load_competition(root, cfg).sample,
        folds=[f"fold{k}" for k in range(n_splits)],
        tta=str(trained.get("tta", "none")).split(","),
    )


def _settings(path: Path) -> Any:
    """What makes two runs the same run: everything but where each machine keeps its data."""
    data = yaml.safe_load(path.read_text())
    if isinstance(data, dict):
        for key in (*PATH_KEYS, "solution", "pretrained_file"):
            data.pop(key, None)
    return data


def build_code_dataset(
    root: Path, *, owner: str, slug: str, weights: list[Path] | None = None
) -> Path:
    """The folder of the code dataset: comp's source (zipped by the upload) plus any weights."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{4,49}", slug):
        raise ConfigError(f"dataset slug '{slug}': 5-50 lower-case letters, digits and dashes")
    folder = root / "kernels" / "_dataset" / slug
    if folder.exists():
        shutil.rmtree(folder)
    package = Path(comp.__file__).parent
    for p in source_files():
        target = folder / "comp" / p.relative_to(package)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, target)
    for w in weights or []:
        if not w.is_file():
            raise DataError(f"{w}: weights file not found")
        shutil.copy2(w, folder / w.name)
    title = f"comp code {slug}"[:50]
    files.write_json(
        folder / DATASET_METADATA,
        {
            "title": title if len(title) >= 6 else f"{title} data",
            "id": f"{owner}/{slug}",
            "licenses": [{"name": "CC0-1.0"}],
            "subtitle": f"comp {comp.__version__} source for Kaggle kernels"[:80].ljust(20, "."),
        },
    )
    return folder


SCRIPT = '''"""comp kernel {run!r}: train and predict on Kaggle, written by comp {version}.

Generated by `comp kernel push`; edit the workspace and push again rather than
editing this file. It carries the resolved config, the folds and (unless a code
dataset is attached) comp's source, and writes runs/, submissions/ and
submission.csv to /kaggle/working. It holds no credentials.
"""

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

RUN = {run!r}
FOLDS = {folds!r}  # None: every fold in this kernel
DATA = {data_ref!r}  # the competition (or dataset) holding the images
CODE_DATASET = {code_dataset!r}
CONFIG = {config}
PAYLOAD = (
{payload}
)

# Kaggle's folders; the environment overrides them to try the script elsewhere.
INPUT = Path(os.environ.get("COMP_KAGGLE_INPUT", "/kaggle/input"))
WORKING = Path(os.environ.get("COMP_KAGGLE_WORKING", "/kaggle/working"))
CODE = Path(os.environ.get("COMP_KAGGLE_CODE", "/tmp/comp-code"))
TEMP = Path(os.environ.get("COMP_KAGGLE_TEMP", "/kaggle/temp"))
NEEDS = {{"torch": "torch", "torchvision": "torchvision", "timm": "timm>=1.0.9",
         "albumentations": "albumentations>=2.0", "sklearn": "scikit-learn", "pandas": "pandas",
         "yaml": "pyyaml", "click": "click>=8.1", "tqdm": "tqdm", "matplotlib": "matplotlib"}}


def mounted(ref):
    """Where Kaggle mounted a competition or dataset (the layout differs between images)."""
    slug = ref.split("/")[-1]
    for path in (INPUT / slug, INPUT / "competitions" / slug, INPUT / "datasets" / ref):
        if path.is_dir():
            return path
    sys.exit(f"{{ref}} is not under {{INPUT}}: attach it to the kernel")


def locate(data, rel):
    """A data path; some competitions are mounted with their folders still zipped (train.zip)."""
    if (data / rel).exists():
        return data / rel
    first = Path(rel).parts[0]
    for archive in (data / f"{{first}}.zip", data / f"{{Path(first).stem}}.zip"):
        if archive.is_file():
            target = TEMP / data.name
            if not (target / rel).exists():
                print("unzipping", archive, flush=True)
                zipfile.ZipFile(archive).extractall(target)
            if (target / rel).exists():
                return target / rel
    sys.exit(f"{{rel}} is neither in {{data}} nor in a zip there")


def install_code(payload):
    if not CODE_DATASET:
        payload.extractall(CODE, [n for n in payload.namelist() if n.startswith("comp/")])
        return CODE
    root = mounted(CODE_DATASET)
    for init in sorted(root.rglob("comp/__init__.py")):
        return init.parent.parent
    for archive in sorted(root.rglob("comp.zip")):
        zipfile.ZipFile(archive).extractall(CODE / "comp")
        return CODE
    sys.exit(f"no comp package in {{root}}")


def ensure_packages():
    import importlib.util

    missing = [pip for mod, pip in NEEDS.items() if importlib.util.find_spec(mod) is None]
    # The trackers comp.yaml names: they log among the outputs, and pull merges them.
    for name in str(CONFIG.get("tracker") or "none").split(","):
        if name.strip() in ("mlflow", "wandb", "tensorboard") and importlib.util.find_spec(name.strip()) is None:
            missing.append(name.strip())
    try:
        import albumentations
        if int(albumentations.__version__.split(".")[0]) < 2:
            missing.append(NEEDS["albumentations"])
    except ImportError:
        pass
    if missing:
        print("installing", *missing, flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], check=True)


def comp(*args, env):
    print("$ comp", *args, flush=True)
    subprocess.run([sys.executable, "-m", "comp", "-w", str(WORKING), *args], check=True, env=env)


def main():
    payload = zipfile.ZipFile(io.BytesIO(base64.b64decode("".join(PAYLOAD))))
    code = install_code(payload)
    ensure_packages()
    WORKING.mkdir(parents=True, exist_ok=True)
    payload.extractall(WORKING, [n for n in payload.namelist() if n.startswith("folds/")])
    payload.extractall(CODE, [n for n in payload.namelist() if n.startswith("{carried}/")])
    data = mounted(DATA)
    config = dict(CONFIG)
    for key in {path_keys!r}:
        if config[key] and config[key].startswith("{carried}/"):
            config[key] = str(CODE / config[key])
        elif config[key]:
            config[key] = str(locate(data, config[key]))
    if config.get("pretrained_file"):
        found = sorted(mounted(CODE_DATASET).rglob(config["pretrained_file"]))
        if not found:
            sys.exit(f"weights {{config['pretrained_file']}} not in {{CODE_DATASET}}")
        config["pretrained_file"] = str(found[0])
    # JSON is YAML, so comp reads this as its comp.yaml.
    (WORKING / "comp.yaml").write_text(json.dumps(config, indent=1))
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(code), os.environ.get("PYTHONPATH", "")]),
        # The decoded-image cache on scratch space, never among the kernel's outputs.
        COMP_CACHE=str(TEMP / "comp-cache"),
        # Trackers write among the run's outputs; `comp kernel pull` merges them locally.
        COMP_TRACKER_DIR=str(WORKING / "runs" / RUN / "tracker"),
        WANDB_MODE=os.environ.get("WANDB_MODE", "offline"),
    )
    folds = [a for k in FOLDS or [] for a in ("--fold", str(k))]
    comp("train", "--name", RUN, *folds, env=env)
    comp("predict", RUN, env=env)
    run = WORKING / "runs" / RUN
    if FOLDS is None:
        shutil.copy(WORKING / "submissions" / f"{{RUN}}.csv", WORKING / "submission.csv")
    else:
        # A part of the folds: keep its test probabilities with its folds, and no partial submission.
        tag = "-".join(map(str, FOLDS))
        (run / "test_probs.csv").rename(run / f"fold{{FOLDS[0]}}" / f"test_probs_folds{{tag}}.csv")
        for ext in (".csv", ".json"):
            (WORKING / "submissions" / f"{{RUN}}{{ext}}").unlink(missing_ok=True)
    print("comp kernel done:", sorted(str(p.relative_to(WORKING)) for p in run.rglob("*") if p.is_file()))


if __name__ == "__main__":
    main()
'''


def render_script(
    *,
    run: str,
    folds: list[int] | None,
    config: dict[str, Any],
    data_ref: str,
    code_dataset: str | None,
    payload: str,
) -> str:
    chunks = [payload[i : i + 96] for i in range(0, len(payload), 96)] or [""]
    return SCRIPT.format(
        run=run,
        version=comp.__version__,
        folds=folds,
        data_ref=data_ref,
        code_dataset=code_dataset,
        carried=CARRIED,
        config=pprint.pformat(config, sort_dicts=False),
        payload="\n".join(f"    {c!r}," for c in chunks),
        path_keys=PATH_KEYS,
    )
