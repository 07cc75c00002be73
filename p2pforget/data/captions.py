"""Image-caption data for CLIP: a procedural generator and loaders for Flickr30K and COCO captions.

Every builder returns images ``x [n_clients, m, 3, S, S]`` (normalized), five captions per
image as open_clip BPE tokens in ``extras["tokens"] [n_clients, m, 5, context_length]``,
and a concept label ``y`` used to partition clients (``data.partition = "dirichlet"`` or
``"by_class"`` skews clients by concept). Each kind's table (``[data.<kind>]``) sets
``image_size`` and ``context_length``.

- ``captions_synth``: shapes x colours x positions x sizes x backgrounds, drawn on
  ``image_size`` pixels, each with five template captions as in Flickr30K; the concept is
  the shape or the colour (``data.captions_synth.concept``). Seconds to generate.
- ``captions_clients``: the same drawings, but each client's pairs show colours of its own (with
  made-up names) and its held-out split colours no one trains on: for client-level unlearning,
  where what a model knows of a client's pairs came from that client only.
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
from . import FederatedData, held_out_size, read, register, shard

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


def render(attrs: np.ndarray, *, size: int, r: np.random.Generator, palette: np.ndarray | None = None) -> np.ndarray:
    """Images ``[N, 3, size, size]`` in [0, 1] of ``attrs [N, 5]``, with a little jitter and noise;
    the colour id indexes ``palette [K, 3]`` (RGB, default :data:`COLOURS`)."""
    palette = np.asarray(tuple(COLOURS.values()) if palette is None else palette)
    centres = {"left": (0.3, 0.5), "right": (0.7, 0.5), "top": (0.5, 0.3), "bottom": (0.5, 0.7), "centre": (0.5, 0.5)}
    out = np.empty((len(attrs), 3, size, size))
    for k, (shape, colour, position, big, background) in enumerate(attrs):
        img = np.full((3, size, size), tuple(BACKGROUNDS.values())[background])
        cx, cy = centres[POSITIONS[position]]
        jitter = r.uniform(-0.04, 0.04, 2)
        radius = size * (0.2 if big else 0.11)
        m = _mask(shape, size, (cx + jitter[0]) * size, (cy + jitter[1]) * size, radius)
        img[:, m] = palette[colour][:, None]
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
class ClientCaptionOptions(CaptionOptions):
    """Keys of ``[data.captions_clients]``: those of :class:`CaptionOptions`, how many colours of its
    own each client has (no other client's pairs show them) and the share of its pairs that show
    them (the rest show the named colours, as the test pairs do: a batch of one client's pairs then
    holds pairs that its own colour tells apart, which contrastive training learns from)."""

    colours_per_client: int = bounded(1, 1)
    own_share: float = bounded(0.5, 0.0, 1.0)


def made_up_names(count: int, r: np.random.Generator) -> list[str]:
    """``count`` distinct made-up words of three syllables (names no pretrained text encoder has read).

    >>> made_up_names(2, np.random.default_rng(0))
    ['toneka', 'dafuru']
    """
    consonants, vowels = "bdfgklmnprstvz", "aeiou"
    names: list[str] = []
    while len(names) < count:
        word = "".join(consonants[r.integers(len(consonants))] + vowels[r.integers(len(vowels))] for _ in range(3))
        if word not in names:
            names.append(word)
    return names


def distinct_colours(count: int, r: np.random.Generator, *, min_distance: float = 0.2) -> np.ndarray:
    """``count`` RGB colours ``[count, 3]``, each at least ``min_distance`` away from the named
    :data:`COLOURS`, the :data:`BACKGROUNDS` and one another, so that no two look alike and every
    shape stands out from its background."""
    taken = np.vstack([np.asarray(tuple(COLOURS.values())), np.repeat(tuple(BACKGROUNDS.values()), 3).reshape(-1, 3)])
    out = taken
    while len(out) < len(taken) + count:
        for _ in range(10_000):
            c = r.uniform(0.05, 0.95, 3)
            if np.linalg.norm(out - c, axis=1).min() >= min_distance:
                out = np.vstack([out, c])
                break
        else:
            raise ValueError(f"{count} colours at least {min_distance} apart do not fit in RGB; lower "
                             "data.captions_clients.colours_per_client or the number of clients")
    return out[len(taken):]


@register("captions_clients", options=ClientCaptionOptions, holds_out=True,
          help="procedural image-caption pairs where each client's pairs show colours of its own "
               "(made-up names); for client-level unlearning")
def captions_clients(cfg: DataConfig, n_clients: int, seed: int) -> FederatedData:
    """Client-level captions: the drawings and captions of ``captions_synth``, but ``own_share`` of
    client ``j``'s pairs show its own ``colours_per_client`` colours, each an RGB colour of its own
    named by a made-up word (``"a small toneka circle on the top"``); the rest show the named
    :data:`COLOURS`. No other client's pairs show them, so a model trained without client ``j``
    has never seen its colours. Each client's held-out split (the same share) shows colours of the
    same kind that no one trains on, so what a model retrieves of a client's held-out pairs it has
    learned from the task, not from that client's pairs; the test pairs show the named colours.
    Labels are 0 (the pairs have no class) and clients are not partitioned by a rule:
    ``data.partition`` must be ``iid``, with no quantity skew.

    Example
    -------
    >>> from p2pforget.data import build
    >>> fd = build(DataConfig(kind="captions_clients", n_samples_per_client=8, n_test=6), n_clients=3, seed=0)
    >>> fd.x.shape, fd.x_holdout.shape, fd.extras["tokens"].shape
    ((3, 8, 3, 32, 32), (3, 2, 3, 32, 32), (3, 8, 5, 16))
    """
    if cfg.partition != "iid" or cfg.quantity_skew or cfg.quantity_dirichlet:
        raise ValueError("data.kind = \"captions_clients\" gives each client its own pairs: set data.partition = \"iid\" "
                         "and leave data.quantity_skew / quantity_dirichlet at 0")
    o = cfg.options("captions_clients")
    m, h, k = cfg.n_samples_per_client, held_out_size(cfg), o.colours_per_client
    r = seeding.rng(seed, purpose="data/captions_clients")
    palette = np.vstack([np.asarray(tuple(COLOURS.values())), distinct_colours(2 * n_clients * k, r)])
    words = list(COLOURS) + made_up_names(2 * n_clients * k, r)
    # colour ids: the named ones, then client j's own (row j), then its held-out ones (row n_clients + j)
    own = len(COLOURS) + np.arange(2 * n_clients * k).reshape(2 * n_clients, k)

    def pairs(colours: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Images and caption tokens of one pair per entry of ``colours`` (ids into ``palette``)."""
        attrs = np.stack([r.integers(0, len(v), len(colours)) for v in ATTRIBUTES], axis=1)
        attrs[:, 1] = colours
        captions = [[t.format(shape=SHAPES[a[0]], colour=words[a[1]], position=POSITIONS[a[2]], size=SIZES[a[3]],
                              background=tuple(BACKGROUNDS)[a[4]]) for t in TEMPLATES] for a in attrs]
        return standardize(render(attrs, size=o.image_size, r=r, palette=palette)), tokenize(captions, o.context_length)

    def client_pairs(colours: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        """``count`` pairs per row of ``colours``, its colours in equal turns (shuffled)."""
        mine = round(count * o.own_share)
        picked = np.stack([r.permutation(np.concatenate([row[np.arange(mine) % k],
                                                          r.integers(0, len(COLOURS), count - mine)]))
                           for row in colours])
        x, tokens = pairs(picked.reshape(-1))
        return x.reshape(len(colours), count, *x.shape[1:]), tokens.reshape(len(colours), count, *tokens.shape[1:])

    x, tokens = client_pairs(own[:n_clients], m)
    x_test, tokens_test = pairs(r.integers(0, len(COLOURS), cfg.n_test))
    held = {}
    if h:
        xh, tokens_h = client_pairs(own[n_clients:], h)
        held = {"x_holdout": xh, "y_holdout": np.zeros((n_clients, h), dtype=np.int64),
                "holdout_counts": np.full(n_clients, h), "extras_holdout": {"tokens": tokens_h}}
    return FederatedData(x=x, y=np.zeros((n_clients, m), dtype=np.int64), x_test=x_test,
                         y_test=np.zeros(cfg.n_test, dtype=np.int64), n_classes=1, extras={"tokens": tokens},
                         extras_test={"tokens": tokens_test}, **held)


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
