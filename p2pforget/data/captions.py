"""Image-caption data for CLIP: a procedural generator and loaders for Flickr30K and COCO captions.

Every builder returns images ``x [n_clients, m, 3, S, S]`` (normalized), five captions per
image as open_clip BPE tokens in ``extras["tokens"] [n_clients, m, 5, context_length]``,
and a concept label ``y`` used to partition clients (``data.partition = "dirichlet"`` or
``"by_class"`` skews clients by concept). Each kind's table (``[data.<kind>]``) sets
``image_size`` and ``context_length``.

- ``captions_synth``: shapes x colours x positions x sizes x backgrounds, drawn on
  ``image_size`` pixels, each with five template captions as in Flickr30K; the concept is
  the shape or the colour (``data.captions_synth.concept``). Seconds to generate.
- ``flickr30k``: Karpathy's ``dataset_flickr30k.json`` (``data.path``) with its image folder next to
  it (``flickr30k-images/`` or ``images/``); its ``split`` is honoured: the test pairs come from
  ``test``, the clients' pool from ``train`` and ``restval``, ``val`` is left out.
- ``coco_captions``: a COCO captions JSON (``data.path``, e.g. ``captions_train2017.json``) with
  its images next to it (``train2017/``, ``val2017/`` or ``images/``).

Real datasets have no concept label (``y = 0``) and are split iid. Their images are kept as uint8
pixels, resized and cropped as open_clip's pretrained CLIP models expect (:class:`ImageFiles`),
and normalized per batch by the model (:func:`decode_pixels`): 5,000 images of 224 pixels take
0.75 GB, not 3 GB in float32 (or 6 GB in float64). The synthetic ones are standardized as
``(x - 0.5) / 0.25``.

Example
-------
>>> describe(np.array([[1, 1, 2, 0, 0]]))[0][0]
'a small green circle on the top'
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import seeding
from ..config import DataConfig, bounded, choice
from . import FederatedData, read, register, shard

if TYPE_CHECKING:
    import torch
from .images import standardize


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
"""The per-channel mean and standard deviation CLIP (Radford et al. 2021) normalizes images with."""


@dataclass(frozen=True)
class CaptionOptions:
    """Keys of ``[data.flickr30k]`` and ``[data.coco_captions]``: the side of the square images
    (pixels) and the caption tokens' context length."""

    image_size: int = bounded(32, 8)
    context_length: int = bounded(16, 4)


@dataclass(frozen=True)
class SynthCaptionOptions(CaptionOptions):
    """Keys of ``[data.captions_synth]``: those of :class:`CaptionOptions` and the concept that
    labels a pair (its shape or its colour)."""

    concept: str = choice("shape", "shape", "colour")

SHAPES = ("square", "circle", "triangle", "cross")
COLOURS = {"red": (0.9, 0.1, 0.1), "green": (0.1, 0.8, 0.2), "blue": (0.15, 0.3, 0.95), "yellow": (0.95, 0.85, 0.1),
           "purple": (0.6, 0.2, 0.8)}
POSITIONS = ("left", "right", "top", "bottom", "centre")
SIZES = ("small", "large")
BACKGROUNDS = {"black": 0.0, "gray": 0.45, "white": 1.0}
TEMPLATES = (
    "a {size} {colour} {shape} on the {position}",
    "a {colour} {shape} on a {background} background",
    "{size} {shape}, {colour}, at the {position}",
    "a picture of a {colour} {shape}",
    "the {shape} is {colour} and {size}",
)
CAPTIONS_PER_IMAGE = len(TEMPLATES)
ATTRIBUTES = (SHAPES, tuple(COLOURS), POSITIONS, SIZES, tuple(BACKGROUNDS))


def describe(attrs: np.ndarray) -> list[list[str]]:
    """The five captions of each row of ``attrs [N, 5]`` (shape, colour, position, size, background ids)."""
    out = []
    for shape, colour, position, size, background in attrs:
        words = {"shape": SHAPES[shape], "colour": tuple(COLOURS)[colour], "position": POSITIONS[position],
                 "size": SIZES[size], "background": tuple(BACKGROUNDS)[background]}
        out.append([t.format(**words) for t in TEMPLATES])
    return out


def _mask(shape: int, size: int, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    dx, dy = (xx - cx) / r, (yy - cy) / r
    if SHAPES[shape] == "square":
        return (np.abs(dx) <= 1) & (np.abs(dy) <= 1)
    if SHAPES[shape] == "circle":
        return dx * dx + dy * dy <= 1
    if SHAPES[shape] == "triangle":
        return (dy <= 1) & (dy >= -1) & (np.abs(dx) <= (dy + 1) / 2)
    return ((np.abs(dx) <= 0.35) & (np.abs(dy) <= 1)) | ((np.abs(dy) <= 0.35) & (np.abs(dx) <= 1))


def render(attrs: np.ndarray, *, size: int, r: np.random.Generator) -> np.ndarray:
    """Images ``[N, 3, size, size]`` in [0, 1] of ``attrs [N, 5]``, with a little jitter and noise."""
    centres = {"left": (0.3, 0.5), "right": (0.7, 0.5), "top": (0.5, 0.3), "bottom": (0.5, 0.7), "centre": (0.5, 0.5)}
    out = np.empty((len(attrs), 3, size, size))
    for k, (shape, colour, position, big, background) in enumerate(attrs):
        img = np.full((3, size, size), tuple(BACKGROUNDS.values())[background])
        cx, cy = centres[POSITIONS[position]]
        jitter = r.uniform(-0.04, 0.04, 2)
        radius = size * (0.2 if big else 0.11)
        m = _mask(shape, size, (cx + jitter[0]) * size, (cy + jitter[1]) * size, radius)
        img[:, m] = np.asarray(tuple(COLOURS.values())[colour])[:, None]
        out[k] = img + r.normal(0.0, 0.03, img.shape)
    return np.clip(out, 0.0, 1.0)


def tokenize(captions: list[list[str]], context_length: int) -> np.ndarray:
    """open_clip BPE tokens ``[N, k, context_length]`` of ``k`` captions per image (no network)."""
    import open_clip

    k = len(captions[0])
    flat = [c for group in captions for c in group]
    return open_clip.tokenize(flat, context_length=context_length).numpy().reshape(len(captions), k, context_length)


def _dataset(x: "np.ndarray | ImageFiles", captions: list[list[str]], y: np.ndarray, n_classes: int, cfg: DataConfig,
             n_clients: int, seed: int, *, purpose: str, splits: list[str] | None = None) -> FederatedData:
    """Pairs split into a test set of ``data.n_test`` and a training pool shared among the clients:
    at random, or by ``splits`` (Karpathy's: the test set is drawn from the ``test`` pairs, the pool
    is the ``train`` and ``restval`` pairs, ``val`` pairs are not used)."""
    tokens = tokenize(captions, cfg.options().context_length)
    lazy = isinstance(x, ImageFiles)
    r = seeding.rng(seed, purpose=purpose)
    if splits is not None:
        split = np.asarray(splits)
        tests = np.flatnonzero(split == "test")
        if cfg.n_test > len(tests):
            raise ValueError(f"data.n_test = {cfg.n_test} but the annotations mark {len(tests)} pairs as split \"test\"; "
                             f"set data.n_test to at most {len(tests)}")
        test = np.sort(r.choice(tests, cfg.n_test, replace=False))
        pool = r.permutation(np.flatnonzero(np.isin(split, ("train", "restval"))))
    else:
        if cfg.n_test >= len(y):
            raise ValueError(f"data.n_test = {cfg.n_test} leaves no training pairs out of {len(y)}; lower it")
        perm = r.permutation(len(y))
        test, pool = perm[:cfg.n_test], perm[cfg.n_test:]
    fields = shard(x.subset(pool) if lazy else x[pool], y[pool], cfg, n_clients, seed, extras={"tokens": tokens[pool]})
    return FederatedData(**fields, x_test=x.take(test) if lazy else x[test], y_test=y[test], n_classes=n_classes,
                         extras_test={"tokens": tokens[test]})


@register("captions_synth", options=SynthCaptionOptions,
          help="procedural image-caption pairs (shapes, colours, positions, sizes, backgrounds; "
                                 "5 captions each) for CLIP")
def captions_synth(cfg: DataConfig, n_clients: int, seed: int) -> FederatedData:
    n = n_clients * cfg.n_samples_per_client + cfg.n_test
    r = seeding.rng(seed, purpose="data/captions_synth")
    attrs = np.stack([r.integers(0, len(values), n) for values in ATTRIBUTES], axis=1)
    o = cfg.options("captions_synth")
    concept = 0 if o.concept == "shape" else 1
    # Balanced concepts, so that a by-concept split gives every client its share.
    attrs[:, concept] = r.permutation(np.arange(n) % len(ATTRIBUTES[concept]))
    captions = describe(attrs)
    x = standardize(render(attrs, size=o.image_size, r=r))
    return _dataset(x, captions, attrs[:, concept].astype(np.int64), len(ATTRIBUTES[concept]), cfg, n_clients, seed,
                    purpose="data/captions_synth/split")


@dataclass(frozen=True)
class ImageFiles:
    """A :class:`~p2pforget.data.Pool` of image files read as a pretrained CLIP sees them, up to
    the normalization: open_clip's evaluation transform (the ``preprocess_cfg`` of its CLIP
    models: shortest side resized to ``size`` with bicubic interpolation, centre crop, RGB) as
    uint8 pixels ``[3, size, size]``. :func:`decode_pixels` finishes the transform per batch."""

    files: tuple[Path, ...]
    size: int

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.files), 3, self.size, self.size)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8)

    def subset(self, idx: np.ndarray) -> "ImageFiles":
        return ImageFiles(tuple(self.files[k] for k in idx), self.size)

    def take(self, idx: np.ndarray) -> np.ndarray:
        from open_clip import image_transform
        from PIL import Image

        full = image_transform(self.size, is_train=False, mean=CLIP_MEAN, std=CLIP_STD, resize_mode="shortest",
                               interpolation="bicubic")
        pixels = type(full)(full.transforms[:-2])  # open_clip's own steps before ToTensor and Normalize
        out = np.empty((len(idx), 3, self.size, self.size), dtype=np.uint8)
        for k, i in enumerate(idx):
            with Image.open(self.files[i]) as im:
                out[k] = np.asarray(pixels(im)).transpose(2, 0, 1)
        return out


def decode_pixels(images: "torch.Tensor", dtype: "torch.dtype") -> "torch.Tensor":
    """uint8 pixels ``[..., 3, S, S]`` (:class:`ImageFiles`) as open_clip's transform ends: scaled
    to [0, 1] (``ToTensor``) and normalized with CLIP's mean and std (``Normalize``), in ``dtype``
    (in float32 the very numbers open_clip gives)."""
    import torch

    mean = torch.as_tensor(CLIP_MEAN, dtype=dtype, device=images.device)[:, None, None]
    std = torch.as_tensor(CLIP_STD, dtype=dtype, device=images.device)[:, None, None]
    return (images.to(dtype).div(255) - mean) / std


def _find(root: Path, name: str, folders: tuple[str, ...]) -> Path:
    for folder in ("",) + folders:
        candidate = root / folder / name
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"image {name!r} is not in {root} or its {', '.join(f + '/' for f in folders)} folders")


def _five(captions: list[str], where: str) -> list[str]:
    if not captions:
        raise ValueError(f"{where} has no captions")
    return [captions[k % len(captions)] for k in range(CAPTIONS_PER_IMAGE)]  # cycles through fewer than five


def read_flickr30k(path: str | Path) -> tuple[list[Path], list[list[str]]]:
    """Image files and five captions each from Karpathy's ``dataset_flickr30k.json``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data.path {str(path)!r} does not exist; point it at Karpathy's dataset_flickr30k.json "
                                "with the flickr30k-images/ folder next to it")
    entries = json.loads(path.read_text())["images"]
    files = [_find(path.parent, e["filename"], ("flickr30k-images", "images")) for e in entries]
    return files, [_five([s["raw"] for s in e["sentences"]], e["filename"]) for e in entries]


def karpathy_splits(path: str | Path) -> list[str] | None:
    """The ``split`` of every image of a Karpathy JSON (``train``, ``restval``, ``val``, ``test``),
    in file order; ``None`` when it marks none as ``test`` (the pairs are then split at random)."""
    splits = [e.get("split", "train") for e in json.loads(Path(path).read_text())["images"]]
    return splits if "test" in splits else None


def read_coco_captions(path: str | Path) -> tuple[list[Path], list[list[str]]]:
    """Image files and five captions each from a COCO captions JSON (images + annotations)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data.path {str(path)!r} does not exist; point it at a COCO captions JSON (e.g. "
                                "captions_train2017.json) with its image folder next to it")
    data = json.loads(path.read_text())
    by_image: dict[int, list[str]] = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a["caption"].strip())
    images = sorted(data["images"], key=lambda im: im["id"])
    files = [_find(path.parent, im["file_name"], ("train2017", "val2017", "images")) for im in images]
    return files, [_five(by_image.get(im["id"], []), im["file_name"]) for im in images]


def _real(reader, cfg: DataConfig, n_clients: int, seed: int, kind: str, splits=None) -> FederatedData:
    if not cfg.path:
        raise ValueError(f"data.kind = {kind!r} needs data.path = \"path/to/annotations.json\"")
    if cfg.partition != "iid":
        raise ValueError(f"data.kind = {kind!r} has no concept labels to skew clients by: set data.partition = \"iid\"")
    files, captions = reader(cfg.path)
    marked = splits(cfg.path) if splits is not None else None
    if marked is not None:  # the val images are never used: not even decoded
        used = [k for k, s in enumerate(marked) if s != "val"]
        files, captions, marked = [files[k] for k in used], [captions[k] for k in used], [marked[k] for k in used]
    x = ImageFiles(tuple(files), cfg.options(kind).image_size)
    return _dataset(x, captions, np.zeros(len(files), dtype=np.int64), 1, cfg, n_clients, seed,
                    purpose=f"data/{kind}/split", splits=marked)


def _flickr30k(cfg: DataConfig, n_clients: int, seed: int) -> FederatedData:
    return _real(read_flickr30k, cfg, n_clients, seed, "flickr30k", splits=karpathy_splits)


def _coco_captions(cfg: DataConfig, n_clients: int, seed: int) -> FederatedData:
    return _real(read_coco_captions, cfg, n_clients, seed, "coco_captions")


@register("flickr30k", options=CaptionOptions, planned=_flickr30k,
          help="Flickr30K (Karpathy's dataset_flickr30k.json at data.path, images next to it)")
def flickr30k(cfg: DataConfig, n_clients: int, seed: int) -> FederatedData:
    return read(_flickr30k(cfg, n_clients, seed))


@register("coco_captions", options=CaptionOptions, planned=_coco_captions,
          help="COCO captions (a captions_*.json at data.path, images next to it)")
def coco_captions(cfg: DataConfig, n_clients: int, seed: int) -> FederatedData:
    return read(_coco_captions(cfg, n_clients, seed))
