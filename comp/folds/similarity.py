"""Image similarity for honest folds: features, exact nearest neighbours and groups.

Reads the train (and test) images, and for ``embed`` a timm backbone's weights
(comp.models.factory). Writes nothing: comp.folds turns the groups into folds
and reports them.

Every feature space gives L2-normalised vectors compared by cosine distance
(1 - cosine similarity, 0 for twins):

- ``subject`` (the default): the subject alone, found by its alpha channel or
  by the border-colour mask of comp.data.subject, and mirrored to
  a canonical side: its silhouette and its grey-level pattern (16x16). The
  background is left out, so a twin on a backdrop of another colour, a mirrored
  view or a palette swap stays close.
- ``colour``: the subject's colours (hue, saturation, value), wherever they sit:
  a back view shares its front's palette.
- ``thumb``: the whole 16x16 colour thumbnail, centred and scaled (re-encodes,
  resizes, brightness and contrast changes, noise).
- ``phash``: 64-bit perceptual hashes (as +-1 vectors: cosine distance is twice
  the share of differing bits).
- ``embed``: a timm backbone's pooled features (crops and other changes that move pixels).

With several methods, two images are as near as they are in the method where
they are nearest (each method's distances scaled, comp.folds scales them by the
test set's): a twin in any way is a twin. A mirror image counts as the same
image (for ``subject`` and ``thumb``). The default is ``subject`` and ``colour``.
Groups join images through their nearest neighbours up to a distance (single
linkage over a k-nearest-neighbour graph), with a cap on their size: frames of
one video chain into one group, and a chain never swallows the data set.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from comp import console
from comp.data.cache import cached_images
from comp.data.images import read_image, to_rgb
from comp.data.subject import alpha_channel, drop_specks, opaque_subject, subject_mask
from comp.errors import DataError

METHODS = ("subject", "colour", "thumb", "phash", "embed")
DEFAULT_METHODS = ("subject", "colour")
# Nearest-neighbour search and clustering run on at most this many dimensions (PCA):
# 100,000 images stay a minute's work, and twins stay twins.
DIMS = 64


# Subjects are found at this size: quick, and a subject keeps its shape there.
WORK = 64


def _decode(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """One image at WORK x WORK as comp reads it (RGB, transparency on white), the same in
    HSV, and its alpha channel where it has transparency."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.draft("RGB", (WORK, WORK))
            alpha = alpha_channel(img)
            rgb = to_rgb(img)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: cannot read image ({e})") from None
    size = (WORK, WORK)
    if rgb.size != size:
        rgb = rgb.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
        if alpha is not None:
            alpha = np.asarray(Image.fromarray(alpha).resize(size, Image.Resampling.BILINEAR))
    return np.asarray(rgb), np.asarray(rgb.convert("HSV")), alpha


def subject_masks(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """(B, W, W): the subject of each of a stack of images (B, W, W, 3), by its alpha channel
    (B, W, W; 255 where an image has none) where that marks one, else by the border colour
    (comp.data.subject)."""
    mask, _ = subject_mask(rgb)
    opaque, marks = opaque_subject(alpha)
    mask = drop_specks(np.where(marks[:, None, None], opaque, mask))
    mask[~mask.any(axis=(1, 2))] = True  # no subject found: the whole image is one
    return mask


def subject_rows(rgb: np.ndarray, mask: np.ndarray, *, side: int = 16) -> np.ndarray:
    """(2, B, 2 * side**2): the subject vectors of a stack of WORK x WORK images (B, W, W, 3)
    with their subject masks, as seen and in a mirror."""
    n, f = len(rgb), rgb.shape[1] // side

    def box(x: np.ndarray) -> np.ndarray:
        return x.reshape(n, side, f, side, f).mean(axis=(2, 4))

    grey = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    # Grey levels relative to the subject's own mean (a brighter or darker variant
    # matches), the backdrop set to that mean so none of its colour bleeds into the edges.
    mean = (grey * mask).sum(axis=(1, 2)) / np.maximum(mask.sum(axis=(1, 2)), 1)
    grey = box(np.where(mask, grey - mean[:, None, None], 0))
    m = box(mask.astype(np.float32))
    grey *= m
    shape = m - m.mean(axis=(1, 2), keepdims=True)
    blocks = np.stack([shape, grey], axis=1)  # (B, 2, side, side)
    blocks /= np.maximum(np.linalg.norm(blocks.reshape(n, 2, -1), axis=2), 1e-12)[..., None, None]
    return np.stack([blocks.reshape(n, -1), blocks[..., ::-1].reshape(n, -1)]).astype(np.float32)


def palette_rows(hsv: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(B, 108): the subject's colours (a stack of HSV images, 0..255, and their subject
    masks) as a histogram of hue (12), saturation (3) and value (3), square-rooted and
    L2-normalised (cosine is then the Hellinger affinity)."""
    h, sat, val = (hsv[..., i].astype(np.int64) * n // 256 for i, n in enumerate((12, 3, 3)))
    bins = (np.arange(len(hsv))[:, None, None] * 108 + h * 9 + sat * 3 + val).ravel()
    hist = np.bincount(bins, weights=mask.ravel().astype(np.float64), minlength=len(hsv) * 108)
    return _unit(np.sqrt(hist.reshape(len(hsv), 108))).astype(np.float32)


def subject_features(paths: Sequence[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every image's subject, found by its alpha channel or by the border-colour mask
    (comp.data.subject): its silhouette and grey pattern at 16x16 (N, 512), the same in a mirror,
    and its colours (N, 108; palette_rows)."""
    paths = list(paths)
    out = np.zeros((2, len(paths), 512), dtype=np.float32)
    colours = np.zeros((len(paths), 108), dtype=np.float32)
    bar = tqdm(total=len(paths), desc="subjects", unit="img", leave=False, disable=console.no_bar())
    chunks = [paths[i : i + 1024] for i in range(0, len(paths), 1024)]

    def decode(chunk: Sequence[Path]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        return [_decode(p) for p in chunk]

    # One thread decodes the next chunk while this one works out the last one's masks
    # (more decoding threads only fight over the GIL).
    with ThreadPoolExecutor(1) as pool, bar:
        pending = pool.submit(decode, chunks[0]) if chunks else None
        start = 0
        for i in range(len(chunks)):
            assert pending is not None
            decoded = pending.result()
            if i + 1 < len(chunks):
                pending = pool.submit(decode, chunks[i + 1])
            rgb, hsv = np.stack([d[0] for d in decoded]), np.stack([d[1] for d in decoded])
            opaque = np.full((WORK, WORK), 255, np.uint8)
            alpha = np.stack([opaque if d[2] is None else d[2] for d in decoded])
            mask = subject_masks(rgb, alpha)
            rows = slice(start, start + len(decoded))
            out[:, rows] = subject_rows(rgb, mask)
            colours[rows] = palette_rows(hsv, mask)
            start += len(decoded)
            bar.update(len(decoded))
    return out[0], out[1], colours


def _mirror(x: np.ndarray, side: int) -> np.ndarray:
    """Rows of side x side images (channels last, if any) seen in a mirror."""
    images = x.reshape(len(x), side, side, -1)
    return np.ascontiguousarray(images[:, :, ::-1]).reshape(x.shape)


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def phashes(paths: Sequence[Path]) -> np.ndarray:
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
                disable=console.no_bar(),
            )
        )
    return np.stack(rows) if rows else np.zeros((0, 64), dtype=bool)


def thumbnails(paths: Sequence[Path], *, side: int = 16) -> np.ndarray:
    """Tiny images, centred and L2-normalised: cosine similarity ignores brightness and contrast."""
    x = (
        cached_images(paths, side, cache_dir=None, desc="thumbnails")
        .reshape(len(paths), -1)
        .astype(np.float32)
    )
    x -= x.mean(axis=1, keepdims=True)
    return _unit(x)


def embeddings(
    paths: Sequence[Path],
    *,
    model: str,
    pretrained: str,
    pretrained_file: str | None,
    img_size: int,
) -> np.ndarray:
    """L2-normalised pooled features of a timm backbone: comp.models.inference's
    extract_features on the CPU, in float32 (no autocast), 256 images a batch. With no
    pretrained weights to be had, a small net learns them from the images themselves
    (comp.folds.embed)."""
    # Imported here, not at the top: torch and timm (and the comp modules that import them)
    # only for --method embed, as the default features need neither.
    import torch

    from comp.hardware.distributed import Dist
    from comp.models.factory import create_model, normalisation, weights_source
    from comp.models.inference import extract_features

    if weights_source(model, pretrained=pretrained, pretrained_file=pretrained_file) == "random":
        from comp.folds.embed import SIZE, learn_embedding

        # A random backbone's features say nothing about meaning: learn them here instead.
        small = cached_images(paths, 2 * SIZE, cache_dir=None, desc="embed")
        return learn_embedding(small)
    net, _ = create_model(
        model, num_classes=1, pretrained=pretrained, pretrained_file=pretrained_file
    )
    mean, std = normalisation(net)
    images = cached_images(paths, img_size, cache_dir=None, desc="embed")
    if not len(images):
        return _unit(np.zeros((0, 1)))  # extract_features has no batch to concatenate
    feats = extract_features(
        net,
        images,
        np.arange(len(images)),
        transform=None,
        views=1,
        batch_size=256,
        mean=mean,
        std=std,
        device=torch.device("cpu"),
        autocast=contextlib.nullcontext,
        # A permuted NHWC batch is channels_last in memory: the layout these features had.
        channels_last=True,
        dist_=Dist(),
        desc="embed",
    )
    return _unit(feats[0].numpy())


@dataclass
class Space:
    """One method's rows (L2-normalised), those of the images' mirror images where the
    method can mirror (None: it cannot, or need not), and how far counts as near: a cosine
    distance d here counts as d / scale."""

    x: np.ndarray
    mirror: np.ndarray | None = None
    scale: float = 1.0

    def take(self, rows: Any) -> Space:
        return Space(self.x[rows], None if self.mirror is None else self.mirror[rows], self.scale)


@dataclass
class Features:
    """Similarity features of some images in one or more spaces. Two images are as near as
    they are in the space where they are nearest (scaled): a twin in any way is a twin."""

    spaces: list[Space]

    def __len__(self) -> int:
        return len(self.spaces[0].x)

    def take(self, rows: Any) -> Features:
        return Features([s.take(rows) for s in self.spaces])

    def scaled(self, scales: Sequence[float]) -> Features:
        return Features(
            [Space(s.x, s.mirror, float(k)) for s, k in zip(self.spaces, scales, strict=True)]
        )

    @property
    def x(self) -> np.ndarray:
        """Every space side by side, for a classifier."""
        return np.concatenate([s.x for s in self.spaces], axis=1)


def features(
    paths: Sequence[Path],
    *,
    methods: Sequence[str] = DEFAULT_METHODS,
    embed: dict[str, object] | None = None,
    dims: int = DIMS,
    seed: int = 0,
) -> Features:
    """One space per method, each at most ``dims`` wide (PCA)."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or not methods:
        raise ValueError(
            f"similarity methods are {', '.join(METHODS)}, not {', '.join(unknown) or 'none'}"
        )
    spaces = []
    subject = None
    if {"subject", "colour"} & set(methods):
        subject = subject_features(paths)  # one decode serves both
    for method in dict.fromkeys(methods):
        if method == "subject":
            assert subject is not None
            space = Space(subject[0], subject[1])
        elif method == "colour":
            assert subject is not None
            space = Space(subject[2])
        elif method == "thumb":
            x = thumbnails(paths)
            space = Space(x, _mirror(x, 16))
        elif method == "phash":
            space = Space(_unit(np.where(phashes(paths), 1.0, -1.0)))
        else:
            space = Space(embeddings(paths, **(embed or {})))  # type: ignore[arg-type]
        spaces.append(_reduce(space, dims=dims, seed=seed))
    return Features(spaces)


def _reduce(space: Space, *, dims: int, seed: int) -> Space:
    """The space in at most ``dims`` dimensions (PCA), as contiguous float32 unit rows."""
    rows = [space.x, space.mirror]
    if space.x.shape[1] > dims and len(space.x) > dims:
        from sklearn.decomposition import PCA

        rng = np.random.default_rng(seed)
        sample = space.x[rng.choice(len(space.x), min(len(space.x), 20_000), replace=False)]
        pca = PCA(n_components=dims, svd_solver="randomized", random_state=seed).fit(sample)
        rows = [None if r is None else _unit(pca.transform(r)) for r in rows]
    x, mirror = (
        None if r is None else np.ascontiguousarray(_unit(r), dtype=np.float32) for r in rows
    )
    assert x is not None
    return Space(x, mirror, space.scale)


@functools.cache
def _search_dtype() -> Any:
    """bfloat16 where this CPU multiplies it faster than float32 (AVX512-BF16, AMX), else
    float32. Only candidates are found at that precision; distances are float32."""
    import torch

    a, b = torch.randn(256, 64), torch.randn(64, 8192)
    best, seconds = torch.float32, float("inf")
    for dtype in (torch.float32, torch.bfloat16):
        x, y = a.to(dtype), b.to(dtype)
        x @ y  # warm up
        start = time.perf_counter()
        for _ in range(3):
            x @ y
        took = time.perf_counter() - start
        if took < 0.8 * seconds:
            best, seconds = dtype, took
    return best


def nearest(
    queries: Features,
    base: Features,
    *,
    k: int = 1,
    query_keys: np.ndarray | None = None,
    base_keys: np.ndarray | None = None,
    desc: str = "neighbours",
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest images of ``base`` to each query, as distances and indices. The
    distance is the smallest over the spaces of the scaled cosine distance, a query's
    mirror image counting as the query.

    An exact search in blocks, so no queries x base matrix is held. Where keys are
    given, a base row whose key equals the query's is skipped (the query itself, or
    its own fold). Missing neighbours have distance inf and index -1.
    """
    import torch

    n_base = len(base)
    bases = [torch.from_numpy(s.x) for s in base.spaces]
    fast = _search_dtype()
    lowp = [b.to(fast) for b in bases]
    bk = torch.from_numpy(np.array(base_keys)) if base_keys is not None else None
    keyed = bk is not None and query_keys is not None
    # Unique base keys (each image its own) skip at most one row a query: ask for one more
    # candidate instead of masking a whole block.
    unique = keyed and len(np.unique(np.asarray(base_keys))) == n_base
    # bfloat16 similarities can swap near ties: a few spare candidates, measured exactly.
    spare = 4 if fast != torch.float32 else 0
    k_eff = min(k, n_base)
    want = min(n_base, k_eff + spare + int(unique))
    dist = np.full((len(queries), k), np.inf, dtype=np.float32)
    idx = np.full((len(queries), k), -1, dtype=np.int64)
    if k_eff == 0:
        return dist, idx
    # About 32 MB of similarities at a time.
    block = max(1, min(4096, 64_000_000 // max(1, n_base)))
    starts = range(0, len(queries), block)
    for start in tqdm(starts, desc=desc, unit="block", leave=False, disable=console.no_bar()):
        rows = slice(start, start + block)
        qk = torch.from_numpy(np.array(query_keys[rows])) if query_keys is not None else None
        same = None
        if qk is not None and bk is not None and not unique:
            same = qk[:, None] == bk[None, :]
        # The k nearest under the smallest distance over spaces are among the k nearest
        # of some one space: gather those, then measure them in every space.
        found = []
        for space, b in zip(queries.spaces, lowp, strict=True):
            for view in (space.x, space.mirror):
                if view is None:
                    continue
                sim = torch.from_numpy(view[rows]).to(fast) @ b.T
                if same is not None:
                    sim.masked_fill_(same, -torch.inf)
                found.append(torch.topk(sim, want, dim=1).indices)
        cand = torch.sort(torch.cat(found, dim=1), dim=1).values
        d = torch.full(cand.shape, torch.inf)
        for space, b in zip(queries.spaces, bases, strict=True):
            near = b[cand]  # (block, candidates, dims)
            sim = torch.einsum("qd,qcd->qc", torch.from_numpy(space.x[rows]), near)
            if space.mirror is not None:
                mirrored = torch.einsum("qd,qcd->qc", torch.from_numpy(space.mirror[rows]), near)
                sim = torch.maximum(sim, mirrored)
            d = torch.minimum(d, (1 - sim).clamp_(min=0) / space.scale)
        repeated = torch.zeros_like(cand, dtype=torch.bool)
        repeated[:, 1:] = cand[:, 1:] == cand[:, :-1]
        d.masked_fill_(repeated, torch.inf)
        if qk is not None and bk is not None:
            d.masked_fill_(qk[:, None] == bk[cand], torch.inf)
        top, where = torch.topk(d, k_eff, dim=1, largest=False)
        dd, w = top.numpy(), torch.gather(cand, 1, where).numpy()
        missing = ~np.isfinite(dd)
        dd[missing], w[missing] = np.inf, -1
        dist[rows, :k_eff], idx[rows, :k_eff] = dd, w
    return dist, idx


@dataclass
class Graph:
    """Each image's nearest neighbours as edges (``a[i]``, ``b[i]``) at ``distance[i]``,
    closest first."""

    n: int
    a: np.ndarray
    b: np.ndarray
    distance: np.ndarray

    def groups(self, thresholds: Sequence[float], *, cap: int) -> list[np.ndarray]:
        """One group id per image for each threshold: images joined through edges of at most
        that distance (single linkage), where no join makes a group of more than ``cap``
        images. The cap stops the chains that single linkage is known for: frames of
        one video join up, and a run of look-alikes does not swallow the data set."""
        from scipy.cluster.hierarchy import DisjointSet

        sets = DisjointSet(range(self.n))
        out = []
        edge = 0
        for t in sorted(thresholds):
            while edge < len(self.distance) and self.distance[edge] <= t:
                a, b = int(self.a[edge]), int(self.b[edge])
                if not sets.connected(a, b) and sets.subset_size(a) + sets.subset_size(b) <= cap:
                    sets.merge(a, b)
                edge += 1
            roots = np.fromiter((sets[i] for i in range(self.n)), dtype=np.int64, count=self.n)
            out.append(np.unique(roots, return_inverse=True)[1].astype(np.int64))
        order = np.argsort(np.argsort(thresholds))
        return [out[i] for i in order]


def neighbour_graph(feats: Features, *, k: int = 10) -> Graph:
    """Every image joined to its ``k`` nearest others (mirror images included)."""
    n = len(feats)
    if n < 2:
        return Graph(n, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0))
    keys = np.arange(n)
    dist, idx = nearest(
        feats,
        feats,
        k=min(k, n - 1),
        query_keys=keys,
        base_keys=keys,
        desc="neighbour graph",
    )
    a = np.repeat(keys, idx.shape[1])
    b, d = idx.ravel(), dist.ravel()
    keep = b >= 0
    order = np.argsort(d[keep], kind="stable")
    return Graph(n, a[keep][order], b[keep][order], d[keep][order].astype(np.float64))


def near_duplicate_groups(paths: Sequence[Path], *, distance: float, cap: int) -> np.ndarray:
    """One group id per image: images within ``distance`` of each other on the subject
    features, or twins of each other as whole thumbnails (re-encodes, resizes; cosine
    distance 0.01), joined as comp.folds joins them (groups of at most ``cap``)."""
    subject = neighbour_graph(features(paths, methods=["subject"]))
    # Full thumbnails, not a PCA of them: a resized twin of a small image stays a twin.
    thumb = neighbour_graph(features(paths, methods=["thumb"], dims=10**6))
    twins = thumb.distance <= 0.01
    order = np.argsort(np.r_[subject.distance, np.zeros(int(twins.sum()))], kind="stable")
    joined = Graph(
        len(paths),
        np.r_[subject.a, thumb.a[twins]][order],
        np.r_[subject.b, thumb.b[twins]][order],
        np.r_[subject.distance, np.zeros(int(twins.sum()))][order],
    )
    return joined.groups([distance], cap=cap)[0]
