"""The script a comp kernel runs on Kaggle: install comp, train, predict.

``comp kernel push`` (comp.kernels.push.render_script) writes a bundle's
``<slug>.py`` as a docstring, the kernel's values as literal constants (the
fields of Kernel, upper-cased: run, folds, data reference, resolved config,
payload), then this file's source as it is. A kernel on Kaggle is one script
file, so its values travel inside it; and nothing here imports comp, which is
what the script unpacks. comp imports this module only for Kernel and its source.

Reads the payload (a base64 zip of the folds, the tables ``comp init`` made in
the workspace, a tuning kernel's seed study and, without a code dataset, comp's
source), the competition or dataset mounted under /kaggle/input and, with a code
dataset, comp and any weights from it. Writes ``comp.yaml``, ``folds/``,
``runs/<run>/``, ``submissions/`` and ``submission.csv`` to /kaggle/working; a
tuning kernel (``comp kernel push --tune``) writes ``tune/<study>.db`` there
instead, its study, which ``comp kernel pull`` merges into the local one. A shared
storage's password comes from the Kaggle secret the kernel names (or, run by hand,
the variable of that name), never from the script. The ``COMP_KAGGLE_*`` variables
move those folders, to run a bundle's script by hand:
``COMP_KAGGLE_INPUT=<folder holding <slug>/> python kernels/<name>/<slug>.py``.
"""

import base64
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import quote

# Kaggle's folders; the environment overrides them to try the script elsewhere.
INPUT = Path(os.environ.get("COMP_KAGGLE_INPUT", "/kaggle/input"))
WORKING = Path(os.environ.get("COMP_KAGGLE_WORKING", "/kaggle/working"))
CODE = Path(os.environ.get("COMP_KAGGLE_CODE", "/tmp/comp-code"))
TEMP = Path(os.environ.get("COMP_KAGGLE_TEMP", "/kaggle/temp"))
NEEDS = {
    "torch": "torch",
    "torchvision": "torchvision",
    "timm": "timm>=1.0.9",
    "albumentations": "albumentations>=2.0",
    "sklearn": "scikit-learn",
    "pandas": "pandas",
    "yaml": "pyyaml",
    "click": "click>=8.1",
    "tqdm": "tqdm",
    "matplotlib": "matplotlib",
}
# What a tuning kernel needs on top, and the drivers of a shared storage.
NEEDS_TUNE = {"optuna": "optuna>=4.0"}
DRIVERS = {
    "postgresql+psycopg:": ("psycopg", "psycopg[binary]"),
    "postgresql": ("psycopg2", "psycopg2-binary"),
    "mysql": ("pymysql", "pymysql"),
}


@dataclass(frozen=True)
class Kernel:
    """This kernel's values: the bundle's script assigns each, upper-cased, above this source."""

    run: str
    folds: list[int] | None  # None: every fold in this kernel
    data: str  # the competition (or dataset) holding the images
    code_dataset: str | None
    config: dict[str, Any]  # comp.yaml, its data paths relative to the data or under carried/
    carried: str  # the payload's folder of tables from the workspace itself
    path_keys: tuple[str, ...]  # the keys of config that are data paths
    payload: tuple[str, ...]  # base64 of the payload's zip, in lines
    # A tuning kernel: study, kernel, kernels, trials (the finished ones to reach), push,
    # storage (a shared one, without its password) and secret (the password's name).
    tune: dict[str, Any] | None = None

    @classmethod
    def of(cls, constants: dict[str, Any]) -> "Kernel":
        return cls(**{f.name: constants[f.name.upper()] for f in fields(cls)})


def mounted(ref: str) -> Path:
    """Where Kaggle mounted a competition or dataset (the layout differs between images)."""
    slug = ref.split("/")[-1]
    for path in (INPUT / slug, INPUT / "competitions" / slug, INPUT / "datasets" / ref):
        if path.is_dir():
            return path
    sys.exit(f"{ref} is not under {INPUT}: attach it to the kernel")


def locate(data: Path, rel: str) -> Path:
    """A data path; some competitions are mounted with their folders still zipped (train.zip)."""
    if (data / rel).exists():
        return data / rel
    first = Path(rel).parts[0]
    for archive in (data / f"{first}.zip", data / f"{Path(first).stem}.zip"):
        if archive.is_file():
            target = TEMP / data.name
            if not (target / rel).exists():
                print("unzipping", archive, flush=True)
                zipfile.ZipFile(archive).extractall(target)
            if (target / rel).exists():
                return target / rel
    sys.exit(f"{rel} is neither in {data} nor in a zip there")


def install_code(payload: zipfile.ZipFile, code_dataset: str | None) -> Path:
    """The folder to put on PYTHONPATH: comp from the payload, or from the code dataset."""
    if not code_dataset:
        payload.extractall(CODE, [n for n in payload.namelist() if n.startswith("comp/")])
        return CODE
    root = mounted(code_dataset)
    for init in sorted(root.rglob("comp/__init__.py")):
        return init.parent.parent
    # Kaggle may keep an uploaded folder as the zip it was sent as.
    for archive in sorted(root.rglob("comp.zip")):
        zipfile.ZipFile(archive).extractall(CODE / "comp")
        return CODE
    sys.exit(f"no comp package in {root}")


def ensure_packages(config: dict[str, Any], tune: dict[str, Any] | None = None) -> None:
    needs = {**NEEDS, **(NEEDS_TUNE if tune else {})}
    storage = (tune or {}).get("storage") or ""
    for prefix, (module, pip) in DRIVERS.items():
        if storage.startswith(prefix):
            needs[module] = pip
            break
    trackers = {n.strip() for n in str(config.get("tracker") or "none").split(",")}
    if tune and "wandb" in trackers:
        needs["optuna_integration"] = "optuna-integration"  # W&B logs a study's trials through it
    missing = [pip for mod, pip in needs.items() if importlib.util.find_spec(mod) is None]
    # The trackers comp.yaml names: they log among the outputs, and pull merges them.
    for name in str(config.get("tracker") or "none").split(","):
        if (
            name.strip() in ("mlflow", "wandb", "tensorboard")
            and importlib.util.find_spec(name.strip()) is None
        ):
            missing.append(name.strip())
    try:
        # Here, not at the top: the image may lack it, and then pip installs it below.
        import albumentations

        if int(albumentations.__version__.split(".")[0]) < 2:
            missing.append(NEEDS["albumentations"])
    except ImportError:
        pass
    if missing:
        print("installing", *missing, flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], check=True)


def comp(*args: str, env: dict[str, str], shown: tuple[str, ...] | None = None) -> None:
    """Run comp; ``shown``: the arguments as the log may show them (no password)."""
    print("$ comp", *(shown or args), flush=True)
    done = subprocess.run([sys.executable, "-m", "comp", "-w", str(WORKING), *args], env=env)
    if done.returncode:
        # Not CalledProcessError: its message would print every argument.
        sys.exit(f"comp {args[0]} failed (exit {done.returncode})")


def kaggle_secret(name: str) -> str | None:
    """A secret attached to this kernel (Add-ons > Secrets on Kaggle), or None."""
    try:
        from kaggle_secrets import UserSecretsClient  # only on Kaggle's images
    except ImportError:
        return None
    try:
        return str(UserSecretsClient().get_secret(name)) or None
    except Exception:
        return None


def storage_with_password(url: str, secret: str | None) -> str:
    """A shared storage's URL with its password, from the environment or a Kaggle secret."""
    if not secret:
        return url
    password = os.environ.get(secret) or kaggle_secret(secret)
    if not password:
        sys.exit(
            f"the study's storage {url.split('@')[-1]} needs its password: add a Kaggle secret "
            f"named {secret} to this kernel (Add-ons > Secrets), or set {secret} to run it by hand"
        )
    scheme, _, rest = url.partition("://")
    user, _, host = rest.rpartition("@")
    return f"{scheme}://{user}:{quote(password, safe='')}@{host}"


def tune(kernel: Kernel, payload: zipfile.ZipFile, env: dict[str, str]) -> None:
    """Run this kernel's share of the study: into the seed study it carries, as
    ``tune/<study>.db`` among the outputs, or into the shared storage."""
    assert kernel.tune is not None
    spec = kernel.tune
    payload.extractall(WORKING, [n for n in payload.namelist() if n.startswith("tune/")])
    # Kernel k draws from seed stream k + 1, as `comp tune --n-workers` workers do.
    args: tuple[str, ...] = ("tune", "--study", spec["study"], "--trials", str(spec["trials"]))
    args += ("--worker", str(spec["kernel"] + 1))
    shown = args
    if spec.get("storage"):
        url = storage_with_password(spec["storage"], spec.get("secret"))
        args, shown = (*args, "--storage", url), (*shown, "--storage", spec["storage"])
    comp(*args, env=env, shown=shown)
    print(
        "comp kernel done:",
        sorted(str(p.relative_to(WORKING)) for p in (WORKING / "tune").rglob("*") if p.is_file()),
    )


def local_config(kernel: Kernel, data: Path) -> dict[str, Any]:
    """The kernel's config with its paths where this machine has them."""
    config = dict(kernel.config)
    for key in kernel.path_keys:
        if config[key] and config[key].startswith(f"{kernel.carried}/"):
            config[key] = str(CODE / config[key])
        elif config[key]:
            config[key] = str(locate(data, config[key]))
    if config.get("pretrained_file"):
        # comp kernel push refuses weights without a code dataset to carry them.
        assert kernel.code_dataset is not None
        found = sorted(mounted(kernel.code_dataset).rglob(config["pretrained_file"]))
        if not found:
            sys.exit(f"weights {config['pretrained_file']} not in {kernel.code_dataset}")
        config["pretrained_file"] = str(found[0])
    return config


def main(kernel: Kernel) -> None:
    payload = zipfile.ZipFile(io.BytesIO(base64.b64decode("".join(kernel.payload))))
    code = install_code(payload, kernel.code_dataset)
    ensure_packages(kernel.config, kernel.tune)
    WORKING.mkdir(parents=True, exist_ok=True)
    payload.extractall(WORKING, [n for n in payload.namelist() if n.startswith("folds/")])
    carried = [n for n in payload.namelist() if n.startswith(f"{kernel.carried}/")]
    payload.extractall(CODE, carried)
    config = local_config(kernel, mounted(kernel.data))
    # JSON is YAML, so comp reads this as its comp.yaml.
    (WORKING / "comp.yaml").write_text(json.dumps(config, indent=1))
    name = kernel.run
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(code), os.environ.get("PYTHONPATH", "")]),
        # The decoded-image cache on scratch space, never among the kernel's outputs.
        COMP_CACHE=str(TEMP / "comp-cache"),
        # Trackers write among the run's outputs; `comp kernel pull` merges them locally.
        COMP_TRACKER_DIR=str(
            WORKING / "tune" / "tracker" if kernel.tune else WORKING / "runs" / name / "tracker"
        ),
        WANDB_MODE=os.environ.get("WANDB_MODE", "offline"),
    )
    if kernel.tune:
        tune(kernel, payload, env)
        return
    folds = [a for k in kernel.folds or [] for a in ("--fold", str(k))]
    comp("train", "--name", name, *folds, env=env)
    comp("predict", name, env=env)
    run = WORKING / "runs" / name
    if kernel.folds is None:
        shutil.copy(WORKING / "submissions" / f"{name}.csv", WORKING / "submission.csv")
    else:
        # A part of the folds: keep its test probabilities with its folds, and no partial submission.
        tag = "-".join(map(str, kernel.folds))
        (run / "test_probs.csv").rename(
            run / f"fold{kernel.folds[0]}" / f"test_probs_folds{tag}.csv"
        )
        for ext in (".csv", ".json"):
            (WORKING / "submissions" / f"{name}{ext}").unlink(missing_ok=True)
    print(
        "comp kernel done:",
        sorted(str(p.relative_to(WORKING)) for p in run.rglob("*") if p.is_file()),
    )


if __name__ == "__main__":
    # Run as the bundle's script: its constants, assigned above this source, are globals here.
    main(Kernel.of(globals()))
