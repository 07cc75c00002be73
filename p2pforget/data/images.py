"""Multi-domain image classification: a synthetic PACS-like set and a loader for PACS-style folders.

``pacs_like``: 4 domains x 7 classes of RGB images (``data.pacs_like.image_size``, default 32). A class is a
shape (circle, square, triangle, cross, ring, diamond, bars) drawn at a jittered position, size and
aspect; a domain is a style over it:

- ``photo``: two-tone colours with a soft light gradient and sensor noise;
- ``art_painting``: random palettes under a striped brush texture;
- ``cartoon``: flat primary colours with a dark outline;
- ``sketch``: a grey outline of the shape on white paper, with pencil noise.

Everything is a pure function of the seed (seconds for thousands of images). The test split mixes
all domains equally. ``image_folder`` reads ``data.path/<domain>/<class>/*.png|jpg`` (the layout of
PACS, DomainNet, OfficeHome), resizes to ``data.image_folder.image_size`` and keeps the domain of every image.
Both standardize pixels with :func:`standardize`.

Example
-------
>>> from p2pforget.config import DataConfig
>>> fd = pacs_like(DataConfig(n_samples_per_client=8, n_test=28, partition="by_domain"), 8, 0)
>>> fd.x.shape, fd.domain_names
((8, 8, 3, 32, 32), ('art_painting', 'cartoon', 'photo', 'sketch'))
>>> [int(v) for v in fd.domain[0]].count(0) >= 6  # client 0 mostly holds domain 0
True
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import seeding
from ..config import DataConfig, bounded
from . import FederatedData, register, shard


@dataclass(frozen=True)
class ImageOptions:
    """Keys of ``[data.pacs_like]`` and ``[data.image_folder]``: the side of the square images
    (pixels) that the model sees."""

    image_size: int = bounded(32, 8)

DOMAINS = ("art_painting", "cartoon", "photo", "sketch")
SHAPES = ("circle", "square", "triangle", "cross", "ring", "diamond", "bars")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def _shape_masks(labels: np.ndarray, size: int, r: np.random.Generator) -> np.ndarray:
    """Boolean ``[n, size, size]`` masks of each label's shape, with random placement."""
    n = len(labels)
    grid = np.linspace(-1.0, 1.0, size)
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    cx, cy = r.uniform(-0.15, 0.15, (2, n, 1, 1))
    s = r.uniform(0.55, 0.8, (n, 1, 1))
    aspect = r.uniform(0.9, 1.1, (n, 1, 1))
    u, v = (xx[None] - cx) * aspect, (yy[None] - cy) / aspect
    rad = np.sqrt(u * u + v * v)
    masks = np.stack([
        rad < s,
        np.maximum(np.abs(u), np.abs(v)) < 0.8 * s,
        (v < 0.7 * s) & (np.abs(u) < 0.6 * (0.7 * s - v) / 1.4) & (v > -0.7 * s),
        ((np.abs(u) < 0.25 * s) & (np.abs(v) < s)) | ((np.abs(v) < 0.25 * s) & (np.abs(u) < s)),
        (rad < s) & (rad > 0.6 * s),
        np.abs(u) + np.abs(v) < s,
        (np.abs(u) < s) & (np.abs(v) < 0.8 * s) & (np.cos(v / s * 2.5 * np.pi) > 0),
    ], axis=1)  # [n, 7, size, size]
    return masks[np.arange(n), labels]


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a neighbour outside it (a 1-pixel edge)."""
    inner = mask.copy()
    for axis in (1, 2):
        for shift in (1, -1):
            inner &= np.roll(mask, shift, axis=axis)
    return mask & ~inner


def render(labels: np.ndarray, domains: np.ndarray, *, size: int, r: np.random.Generator) -> np.ndarray:
    """Images ``[n, 3, size, size]`` in [0, 1] of shape ``labels`` in the style of ``domains`` (ids into DOMAINS)."""
    n = len(labels)
    mask = _shape_masks(labels, size, r)
    edge = _outline(mask)
    m = mask[:, None].astype(np.float64)
    e = edge[:, None].astype(np.float64)
    grid = np.linspace(0.0, 1.0, size)
    out = np.empty((n, 3, size, size))

    # Foreground and background always differ in brightness (one light, one dark), so the shape
    # is visible in every style; colours, textures and noise are what the domains change.
    light = r.random((n, 1, 1, 1)) < 0.5
    hue_fg, hue_bg = r.uniform(0.0, 1.0, (2, n, 3, 1, 1))
    fg = np.where(light, 0.6 + 0.4 * hue_fg, 0.35 * hue_fg)
    bg = np.where(light, 0.35 * hue_bg, 0.6 + 0.4 * hue_bg)
    freq, tilt = r.uniform(6, 12, (n, 1, 1)), r.uniform(-6, 6, (n, 1, 1))
    stripes = 0.5 + 0.5 * np.sin((grid[None, :, None] * freq + grid[None, None, :] * tilt) * np.pi)
    gradient = grid[None, None, :, None] * r.uniform(0.1, 0.3, (n, 1, 1, 1))
    noise = r.standard_normal((n, 3, size, size))

    art = m * fg + (1 - m) * bg + 0.25 * (stripes[:, None] - 0.5)
    cartoon = (1 - e) * (m * np.round(fg) * 0.8 + 0.1 + (1 - m) * (0.25 + 0.5 * np.round(bg))) + e * 0.02
    photo = m * fg + (1 - m) * bg + gradient + 0.06 * noise
    sketch = 0.92 - 0.75 * e + 0.05 * noise[:, :1]
    for d, img in enumerate((art, cartoon, photo, sketch)):
        sel = domains == d
        out[sel] = img[sel]
    return np.clip(out, 0.0, 1.0)


def standardize(x: np.ndarray) -> np.ndarray:
    """Pixels in [0, 1] to roughly zero mean and unit scale, ``(x - 0.5) / 0.25`` (plain SGD on small
    conv nets stalls on raw [0, 1] inputs)."""
    return (x - 0.5) / 0.25


@register("pacs_like", options=ImageOptions,
          help="synthetic PACS-like images: 4 domains (styles) x 7 classes (shapes), RGB",
          sample_numbers=lambda cfg: 3 * cfg.options("pacs_like").image_size ** 2)
def pacs_like(cfg: DataConfig, n_clients: int, seed: int) -> FederatedData:
    pool_n = n_clients * cfg.n_samples_per_client
    r = seeding.rng(seed, purpose="data/pacs_like")
    total = pool_n + cfg.n_test
    # Classes and domains balanced within the training pool and within the test split.
    y = np.concatenate([r.permutation(np.arange(k) % len(SHAPES)) for k in (pool_n, cfg.n_test)])
    dom = np.concatenate([r.permutation(np.arange(k) % len(DOMAINS)) for k in (pool_n, cfg.n_test)])
    x = standardize(render(y, dom, size=cfg.options("pacs_like").image_size, r=r))
    test = slice(pool_n, total)
    fields = shard(x[:pool_n], y[:pool_n], cfg, n_clients, seed, domains=dom[:pool_n])
    return FederatedData(**fields, x_test=x[test], y_test=y[test], n_classes=len(SHAPES),
                         domain_test=dom[test], domain_names=DOMAINS)


def read_image_folder(root: str | Path, *, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[str, ...], tuple[str, ...]]:
    """Images ``[N, 3, size, size]`` in [0, 1], class ids, domain ids, domain names and class names
    from ``root/<domain>/<class>/*``; classes are the union over domains, sorted."""
    from PIL import Image

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data.path {str(root)!r} is not a directory; point it at a folder laid out as "
                                "<domain>/<class>/*.png (e.g. PACS)")
    domains = tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
    classes = tuple(sorted({c.name for d in domains for c in (root / d).iterdir() if c.is_dir()}))
    images, labels, doms = [], [], []
    for di, d in enumerate(domains):
        for ci, c in enumerate(classes):
            folder = root / d / c
            files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
            for f in files:
                with Image.open(f) as im:
                    arr = np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float64) / 255.0
                images.append(arr.transpose(2, 0, 1))
                labels.append(ci)
                doms.append(di)
    if not images:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {str(root)!r}/<domain>/<class>/")
    return np.stack(images), np.array(labels, dtype=np.int64), np.array(doms, dtype=np.int64), domains, classes


@register("image_folder", options=ImageOptions, help="PACS/DomainNet-style folders data.path/<domain>/<class>/*.png|jpg")
def image_folder(cfg: DataConfig, n_clients: int, seed: int) -> FederatedData:
    if not cfg.path:
        raise ValueError("data.kind = 'image_folder' needs data.path = \"path/to/root\" (root/<domain>/<class>/*.png)")
    x, y, dom, names, classes = read_image_folder(cfg.path, size=cfg.options("image_folder").image_size)
    x = standardize(x)
    if cfg.n_test >= len(y):
        raise ValueError(f"data.n_test = {cfg.n_test} leaves no training images out of {len(y)}; lower it")
    perm = seeding.rng(seed, purpose="data/image_folder").permutation(len(y))
    test, pool = perm[:cfg.n_test], perm[cfg.n_test:]
    fields = shard(x[pool], y[pool], cfg, n_clients, seed, domains=dom[pool])
    return FederatedData(**fields, x_test=x[test], y_test=y[test], n_classes=len(classes),
                         domain_test=dom[test], domain_names=names)
