"""Near-duplicate images, found so that cross-validation never splits them across folds.

Reads the train (and test) images. Writes nothing: ``comp folds`` turns the
clusters into a ``group`` column of the folds CSV and reports them.

Two images are near-duplicates when any chosen method says so:

- ``phash``: their perceptual hashes differ in at most ``hash_distance`` of 64 bits;
- ``thumb``: their 16x16 colour thumbnails, centred and scaled, have a cosine
  similarity of at least ``similarity`` (re-encodes, resizes, brightness and
  contrast changes, noise);
- ``embed``: a timm backbone's pooled features have that cosine similarity
  (crops and other changes that move pixels).
 Clusters are the connected components of
that neighbour graph: frames of one video chain into one group.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.neighbors import NearestNeighbors
from tqdm.auto import tqdm

from comp.data import read_image

METHODS = ("phash", "thumb", "embed")


def phashes(paths: Sequence[Path], *, progress: bool = True) -> np.ndarray:
    """64-bit perceptual hashes as an (N, 64) boolean array."""
    import imagehash
    from PIL import Image

    def one(path: Path) -> np.ndarray:
        # comp's own reader: every mode, EXIF rotation and bit depth as training sees them.
        image = Image.fromarray(read_image(path, 64))
        return np.asarray(imagehash.phash(image, hash_size=8).hash, dtype=bool).ravel()

    with ThreadPoolExecutor(8) as pool:
        rows = list(
            tqdm(
                pool.map(one, paths),
                total=len(paths),
                desc="hash",
                unit="img",
                leave=False,
                disable=not progress,
            )
        )
    return np.stack(rows) if rows else np.zeros((0, 64), dtype=bool)


def thumbnails(paths: Sequence[Path], *, side: int = 16, progress: bool = True) -> np.ndarray:
    """Tiny images, centred and L2-normalised: cosine similarity ignores brightness and contrast."""
    from comp.data import load_images

    x = (
        load_images(paths, side, desc="thumbnails", progress=progress)
        .reshape(len(paths), -1)
        .astype(np.float32)
    )
    x -= x.mean(axis=1, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)


def embeddings(
    paths: Sequence[Path],
    *,
    model: str,
    pretrained: str,
    pretrained_file: str | None,
    img_size: int,
) -> np.ndarray:
    """L2-normalised pooled features of a timm backbone."""
    import torch

    from comp.data import load_images
    from comp.models import create_model, normalisation

    net: Any
    net, _ = create_model(
        model, num_classes=1, pretrained=pretrained, pretrained_file=pretrained_file
    )
    net.eval()
    mean, std = (t.reshape(1, -1, 1, 1) for t in normalisation(net))
    images = load_images(paths, img_size, desc="embed")
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), 256):
            x = torch.from_numpy(images[start : start + 256]).permute(0, 3, 1, 2).float() / 255
            feats_batch: torch.Tensor = net.forward_head(
                net.forward_features((x - mean) / std), pre_logits=True
            )
            out.append(feats_batch.float().numpy())
    feats = np.concatenate(out) if out else np.zeros((0, 1))
    return feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)


def _graph(a: np.ndarray, b: np.ndarray | None, *, metric: str, radius: float) -> csr_matrix:
    nn = NearestNeighbors(radius=radius, metric=metric, algorithm="brute", n_jobs=-1).fit(a)
    return nn.radius_neighbors_graph(a if b is None else b, mode="connectivity")


@dataclass
class Leaks:
    groups: np.ndarray  # one cluster id per train image
    clusters: list[list[int]]  # clusters of two or more, largest first (indices into train)
    test_matches: list[tuple[int, int]] = field(default_factory=list)  # (test index, train index)

    @property
    def duplicated(self) -> int:
        return sum(len(c) for c in self.clusters)


def find_leaks(
    train_paths: Sequence[Path],
    test_paths: Sequence[Path] = (),
    *,
    methods: Sequence[str] = ("phash", "thumb"),
    hash_distance: int = 4,
    similarity: float = 0.99,
    embed: dict[str, object] | None = None,
    progress: bool = True,
) -> Leaks:
    """Cluster the train images into near-duplicate groups and find test images with a twin in train."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or not methods:
        raise ValueError(
            f"near-duplicate methods are {', '.join(METHODS)}, not {', '.join(unknown)}"
        )
    n = len(train_paths)
    paths = [*train_paths, *test_paths]
    graph = csr_matrix((n, n), dtype=bool)
    cross = csr_matrix((len(test_paths), n), dtype=bool)
    for method in methods:
        if method == "phash":
            x, metric, radius = (
                phashes(paths, progress=progress),
                "hamming",
                (hash_distance + 0.5) / 64,
            )
        elif method == "thumb":
            x, metric, radius = thumbnails(paths, progress=progress), "cosine", 1 - similarity
        else:
            x, metric, radius = embeddings(paths, **(embed or {})), "cosine", 1 - similarity  # type: ignore[arg-type]
        graph = graph + _graph(x[:n], None, metric=metric, radius=radius)
        if len(test_paths):
            cross = cross + _graph(x[:n], x[n:], metric=metric, radius=radius)
    _, groups = connected_components(graph, directed=False)
    sizes = np.bincount(groups)
    clusters = [np.flatnonzero(groups == g).tolist() for g in np.flatnonzero(sizes > 1)]
    clusters.sort(key=len, reverse=True)
    coo = cross.tocoo()
    matches = sorted({(int(t), int(r)) for t, r in zip(coo.row, coo.col, strict=True)})
    first: dict[int, int] = {}
    for t, r in matches:
        first.setdefault(t, r)
    return Leaks(groups=groups, clusters=clusters, test_matches=sorted(first.items()))
