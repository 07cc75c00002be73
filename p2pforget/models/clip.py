"""CLIP models from open_clip, built offline, with LoRA, last-block or full fine-tuning.

``[model] kind = "clip"``: ``clip_config`` is ``"tiny"`` (shipped in ``p2pforget/configs/clip/``: a
2-layer ViT on 32x32 images and a 2-layer text transformer, 3.4 M parameters, trains on a CPU),
any config name open_clip knows (e.g. ``"ViT-B-32"``), or a path to an open_clip JSON config.
Weights come only from a local checkpoint (``pretrained = "path"``), never from the network;
without one the backbone is open_clip's initialization under a fixed seed, the same on every
process. ``finetune`` chooses what trains (everything else is frozen and is not part of the flat
parameter vector the engine stacks per client):

- ``lora`` (default, as in federated CLIP fine-tuning with adapters): low-rank adapters
  ``W + (alpha/r) B A`` (Hu et al., ICLR 2022) on every attention input projection and MLP layer
  of both towers, as ``torch.nn.utils.parametrize`` parametrizations, plus the temperature;
- ``last_blocks``: the last residual block of each tower, the final norms and projections, and
  the temperature;
- ``full``: every parameter.

The tokenizer is open_clip's (its BPE vocabulary ships with the package).

Example
-------
>>> from p2pforget.config import ModelConfig
>>> model = build_clip(ModelConfig(kind="clip"))
>>> sorted({n.split(".")[-1] for n, p in model.named_parameters() if p.requires_grad})
['A', 'B', 'logit_scale']
"""
from __future__ import annotations

import contextlib
import logging
import math
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..config import ModelConfig, bounded, choice
from ..data.captions import CAPTIONS_PER_IMAGE, decode_pixels
from ..registry import MODELS

BACKBONE_SEED = 0
"""Seed of the backbone's initialization when no checkpoint is given (every process builds the same)."""


class LoRA(nn.Module):
    """The parametrization ``W -> W + scale * B @ A`` with ``A [r, in]`` (Kaiming-uniform) and
    ``B [out, r]`` (zero), so that training starts from the frozen ``W``."""

    def __init__(self, out_features: int, in_features: int, *, rank: int, alpha: float) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, in_features))
        self.B = nn.Parameter(torch.zeros(out_features, rank))
        self.scale = alpha / rank
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        nn.init.zeros_(self.B)

    def forward(self, W: torch.Tensor) -> torch.Tensor:
        return W + self.scale * (self.B @ self.A)


def _open_clip():
    import open_clip  # imported here: it takes seconds, and only CLIP models need it

    return open_clip


def config_name(name_or_path: str) -> str:
    """Register the shipped (``tiny``) or given JSON config with open_clip and return its name; an
    open_clip config name is returned as it is."""
    open_clip = _open_clip()
    shipped = resources.files("p2pforget").joinpath(f"configs/clip/{name_or_path}.json")
    if shipped.is_file():
        path = Path(str(shipped))
    elif name_or_path.endswith(".json"):
        path = Path(name_or_path)
        if not path.is_file():
            raise FileNotFoundError(f"model.clip.clip_config = {name_or_path!r}: no such file; give tiny, an open_clip "
                                    "config name (e.g. ViT-B-32) or the path of an open_clip JSON config")
    elif name_or_path in open_clip.list_models():
        return name_or_path
    else:
        raise ValueError(f"model.clip.clip_config = {name_or_path!r} is not an open_clip config; give tiny, one of "
                         f"{', '.join(open_clip.list_models()[:6])}, ... or the path of a JSON config")
    name = f"p2pforget-{path.stem}"
    if name not in open_clip.list_models():
        target = Path(tempfile.mkdtemp()) / f"{name}.json"  # open_clip names a config after its file
        shutil.copyfile(path, target)
        open_clip.add_model_config(target)
    return name


def tokenizer(cfg: ModelConfig):
    """open_clip's tokenizer for the configured model (no network access)."""
    return _open_clip().get_tokenizer(config_name(cfg.options("clip").clip_config))


def _add_lora(model: nn.Module, *, rank: int, alpha: float) -> None:
    for module in list(model.modules()):
        if isinstance(module, nn.MultiheadAttention):
            W = module.in_proj_weight
            parametrize.register_parametrization(module, "in_proj_weight", LoRA(W.shape[0], W.shape[1], rank=rank, alpha=alpha))
        elif isinstance(module, nn.Sequential) and hasattr(module, "c_fc"):
            for linear in (module.c_fc, module.c_proj):
                W = linear.weight
                parametrize.register_parametrization(linear, "weight", LoRA(W.shape[0], W.shape[1], rank=rank, alpha=alpha))


def _trainable_last_blocks(model: nn.Module) -> None:
    towers = [model.visual.transformer.resblocks[-1], model.transformer.resblocks[-1], model.visual.ln_post, model.ln_final]
    for module in towers:
        for p in module.parameters():
            p.requires_grad_(True)
    for name in ("text_projection",):
        getattr(model, name).requires_grad_(True)
    if isinstance(model.visual.proj, nn.Parameter):
        model.visual.proj.requires_grad_(True)


def build_clip(cfg: ModelConfig) -> nn.Module:
    """The open_clip CLIP model of ``cfg`` (``[model.clip]``) with its trainable parameters set by
    its ``finetune``."""
    open_clip = _open_clip()
    cfg = cfg.options("clip")
    name = config_name(cfg.clip_config)
    logging.getLogger().disabled, previous = True, logging.getLogger().disabled  # "no pretrained weights" notice
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(BACKBONE_SEED)
            model = open_clip.create_model(name, pretrained=None)
    finally:
        logging.getLogger().disabled = previous
    if cfg.pretrained:
        path = Path(cfg.pretrained)
        if not path.is_file():
            raise FileNotFoundError(f"model.clip.pretrained = {cfg.pretrained!r} does not exist; p2pforget never downloads "
                                    "weights: give the path of a local open_clip checkpoint, or leave it empty")
        # open_clip's own loader reads every format it writes or converts: a bare state dict, an
        # open_clip training checkpoint ({"state_dict": {"module.*": ...}, "epoch": ...}), .safetensors,
        # OpenAI's and big_vision's weights.
        open_clip.load_checkpoint(model, str(path))
    if cfg.finetune == "full":
        return model
    for p in model.parameters():
        p.requires_grad_(False)
    model.logit_scale.requires_grad_(True)
    if cfg.finetune == "lora":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(BACKBONE_SEED)
            _add_lora(model, rank=cfg.lora_rank, alpha=cfg.lora_alpha)
    else:
        _trainable_last_blocks(model)
    return model


MAX_LOGIT_SCALE = math.log(100.0)
"""The temperature's bound, as in CLIP (Radford et al. 2021): ``exp(logit_scale) <= 100``."""

RECALL_AT = (1, 5, 10)
"""The k of the R@k a run reports, image->text and text->image."""

_FAR = -1e4  # a similarity no real pair reaches (|scaled cosine| <= 100): padding never wins


class ContrastiveCLIP(nn.Module):
    """A CLIP model as a task: symmetric InfoNCE with a learnable temperature (Radford et al.
    2021, eq. in Fig. 3) on batches ``{"x": images [b, 3, S, S], "tokens": [b, c, L], "u": [b],
    "mask": [b]}``; each pair's caption is one of its ``c`` captions, chosen by ``u`` in [0, 1)
    (the engine draws it per round and step, so every epoch sees other captions). Padding rows
    (``mask = 0``) are neither anchors nor negatives.

    ``score`` is the retrieval quality the engine reports as its test accuracy: the mean of
    image-to-text and text-to-image R@1 (as a fraction) with all ``c`` captions in the gallery
    (and, for the unlearning metrics, the test pairs as distractors).
    ``subnetworks`` names the two towers (``image``, ``text``) for one-branch updates.
    """

    loss_weights = {"infonce": 1.0}
    recall_at = RECALL_AT

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.clip = clip
        self.subnetworks = {"image": "clip.visual"}

    def forward(self, images: torch.Tensor, tokens: torch.Tensor):
        return self.clip(self.pixels(images), tokens)

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        """Images as the image tower takes them: stored uint8 pixels (Flickr30K, COCO) decoded per
        batch (:func:`~p2pforget.data.captions.decode_pixels`); float images as they are."""
        if images.is_floating_point():
            return images
        return decode_pixels(images, self.clip.logit_scale.dtype)

    def scale(self) -> torch.Tensor:
        return self.clip.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """Normalized image embeddings of ``images [b, 3, S, S]``, :data:`EMBED_PAIRS` images at a
        time (an evaluation set of any size takes the memory of that many)."""
        with _batchable_attention(images.device):
            return _in_chunks(lambda x: self.clip.encode_image(self.pixels(x), normalize=True), images, EMBED_PAIRS)

    def embed_texts(self, tokens: torch.Tensor) -> torch.Tensor:
        """Normalized caption embeddings of ``tokens [b, L]``. Shorter token rows than the text
        tower's context are padded with zeros (the tokenizer's own padding; under the causal mask
        the end-of-text token never sees it), so data tokenized for a small model serve a larger one."""
        context = self.clip.context_length
        if tokens.shape[-1] > context:
            raise ValueError(f"captions have {tokens.shape[-1]} tokens but the model's text tower reads at most "
                             f"{context}: set context_length = {context} (or less) in the dataset's table, e.g. [data.captions_synth]")
        if tokens.shape[-1] < context:
            tokens = torch.nn.functional.pad(tokens, (0, context - tokens.shape[-1]))
        with _batchable_attention(tokens.device):
            return _in_chunks(lambda t: self.clip.encode_text(t, normalize=True), tokens, EMBED_PAIRS * CAPTIONS_PER_IMAGE)

    def chosen_tokens(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        tokens = batch["tokens"]
        if tokens.dim() == 2:
            return tokens
        pick = (batch["u"] * tokens.shape[1]).long().clamp(max=tokens.shape[1] - 1)
        return torch.gather(tokens, 1, pick[:, None, None].expand(-1, 1, tokens.shape[2]))[:, 0]

    def similarities(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Scaled cosine similarities ``[b, b]`` of the batch's images (rows) and chosen captions."""
        return self.scale() * self.embed_images(batch["x"]) @ self.embed_texts(self.chosen_tokens(batch)).T

    def loss_terms(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"infonce": infonce(self.similarities(batch), batch["mask"])}

    def embed_gallery(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The embeddings of the batch's gallery (``gallery_x``, ``gallery_tokens``), to be added to
        every batch scored against it by the same model: several sets share one gallery, which is
        then embedded once."""
        tokens = batch["gallery_tokens"]
        return {"gallery_image": self.embed_images(batch["gallery_x"]),
                "gallery_text": self.embed_texts(tokens.reshape(tokens.shape[0] * tokens.shape[1], -1))}

    def judge(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`score` and :meth:`membership` of the batch's pairs, from one embedding of them."""
        both, image, text = self._retrieve(batch)
        n, c = batch["tokens"].shape[:2]
        return both.mean(), self._membership(image[:n], text[:n * c].reshape(n, c, -1))

    def score(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The mean of image-to-text and text-to-image R@1 (a fraction) of the batch's pairs with all
        their captions in the gallery. With ``gallery_x``/``gallery_tokens`` (the unlearning
        metrics pass the test pairs), each pair is instead retrieved among its own image or
        captions and the gallery's only, so that sets of different sizes and make-ups (one
        client's similar pairs) are scored against the same distractors. A retrieved caption with
        the very words of one of the image's own captions counts as a hit (template captions
        repeat across images; for Flickr30K-style captions this is plain R@1)."""
        return self._retrieve(batch)[0].mean()

    def directions(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[image-to-text R@1, text-to-image R@1]`` (fractions), each retrieved as in :meth:`score`
        (whose value is their mean)."""
        return self._retrieve(batch)[0]

    def _retrieve(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`directions`, and the image and caption embeddings they were computed from."""
        x, tokens = batch["x"], batch["tokens"]
        n, c = tokens.shape[0], tokens.shape[1]
        own = torch.ones(n, n, dtype=torch.bool, device=x.device)
        if "gallery_image" in batch:  # the gallery embedded once for this model (embed_gallery)
            image = torch.cat([self.embed_images(x), batch["gallery_image"]])
            text = torch.cat([self.embed_texts(tokens.reshape(n * c, -1)), batch["gallery_text"]])
            tokens = torch.cat([tokens, batch["gallery_tokens"]])
            own = torch.eye(n, dtype=torch.bool, device=x.device)
        else:
            if "gallery_x" in batch:
                x, tokens = torch.cat([x, batch["gallery_x"]]), torch.cat([tokens, batch["gallery_tokens"]])
                own = torch.eye(n, dtype=torch.bool, device=x.device)
            image = self.embed_images(x)
            text = self.embed_texts(tokens.reshape(x.shape[0] * c, -1))
        total = image.shape[0]
        # which images each query pair may be compared with: its own, the other pairs (no gallery)
        # or the gallery's (with one)
        allowed = torch.cat([own, torch.ones(n, total - n, dtype=torch.bool, device=x.device)], dim=1)  # [n, total]
        key = _caption_keys(tokens)                                   # [total, c]
        flat = key.reshape(-1)
        low = torch.finfo(image.dtype).min
        sim = torch.where(allowed.repeat_interleave(c, dim=1), image[:n] @ text.T, low)
        i2t = (flat[sim.argmax(dim=1)][:, None] == key[:n]).any(dim=1).to(image.dtype).mean()
        sim = torch.where(allowed.repeat_interleave(c, dim=0), text[:n * c] @ image.T, low)
        t2i = (key[sim.argmax(dim=1)] == flat[:n * c, None]).any(dim=1).to(image.dtype).mean()
        return torch.stack([i2t, t2i]), image, text

    def recall(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[i2t R@1, R@5, R@10, t2i R@1, R@5, R@10]`` (fractions) of the batch's pairs, a hit
        counted as in :meth:`score`."""
        tokens = batch["tokens"]
        n, c = tokens.shape[0], tokens.shape[1]
        image = self.embed_images(batch["x"])
        text = self.embed_texts(tokens.reshape(n * c, -1))
        key = _caption_keys(tokens)
        flat = key.reshape(-1)
        out = []
        top = (image @ text.T).topk(min(max(RECALL_AT), n * c), dim=1).indices      # [n, K] captions per image
        hit = (flat[top][:, :, None] == key[:, None, :]).any(dim=2)                  # [n, K]
        out += [hit[:, :k].any(dim=1).to(image.dtype).mean() for k in RECALL_AT]
        top = (text @ image.T).topk(min(max(RECALL_AT), n), dim=1).indices           # [n c, K] images per caption
        hit = (key[top] == flat[:, None, None]).any(dim=2)
        out += [hit[:, :k].any(dim=1).to(image.dtype).mean() for k in RECALL_AT]
        return torch.stack(out)

    def membership(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per pair, the scaled cosine similarity of the image and its captions (their mean): a
        model fitted to a pair scores it higher than pairs it never saw."""
        tokens = batch["tokens"]
        n, c = tokens.shape[0], tokens.shape[1]
        return self._membership(self.embed_images(batch["x"]), self.embed_texts(tokens.reshape(n * c, -1)).reshape(n, c, -1))

    def _membership(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """``image [n, D]``, ``text [n, c, D]`` -> the scaled similarity of each image and its mean caption."""
        return self.scale() * (image * text.mean(dim=1)).sum(-1)


EMBED_PAIRS = 1024
"""Image-caption pairs embedded at once (their images, or their captions): bigger sets go in chunks."""


def _in_chunks(embed, rows: torch.Tensor, size: int) -> torch.Tensor:
    """``embed(rows)``, ``size`` rows at a time (in one call when they fit)."""
    if rows.shape[0] <= size:
        return embed(rows)
    return torch.cat([embed(rows[s:s + size]) for s in range(0, rows.shape[0], size)])


def _batchable_attention(device: torch.device):
    """On CUDA, attention by the math kernel only. Once vmap batches the clients, the
    memory-efficient kernel rejects the text tower's causal mask ("attn_bias: wrong shape (batch
    dimension)") and the fused kernels' backward rejects the batched layout ("LSE is not correctly
    aligned"), seen with torch 2.11 on an H200; either would send the engine row by row."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


def _caption_keys(tokens: torch.Tensor) -> torch.Tensor:
    """A 64-bit polynomial hash of each token sequence ``[..., L] -> [...]`` (wrapping
    arithmetic): equal captions get equal keys."""
    powers = torch.ones(tokens.shape[-1], dtype=torch.int64, device=tokens.device)
    for i in range(1, tokens.shape[-1]):
        powers[i] = powers[i - 1] * 1_000_003
    return (tokens.long() * powers).sum(-1)


def infonce(sim: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of similarity logits ``sim [b, b]`` (pair i = row i, column i), averaged
    over the rows with ``mask = 1``; masked rows and columns are no one's negatives.

    >>> round(float(infonce(torch.eye(2) * 10.0, torch.ones(2))), 5)  # log(1 + e^-10)
    5e-05
    """
    keep = mask > 0
    pair = keep[:, None] & keep[None, :]
    logits = torch.where(pair, sim, torch.full_like(sim, _FAR))
    target = torch.arange(sim.shape[0], device=sim.device)
    i2t = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    t2i = torch.nn.functional.cross_entropy(logits.T, target, reduction="none")
    w = mask.to(sim.dtype)
    return 0.5 * ((w * i2t).sum() + (w * t2i).sum()) / w.sum().clamp(min=1)


@dataclass(frozen=True)
class CLIPOptions:
    """Keys of ``[model.clip]``: the open_clip config (``tiny``, an open_clip name or a JSON path),
    a local checkpoint (never downloaded), which parameters train and the LoRA adapters' size."""

    clip_config: str = "tiny"
    pretrained: str = ""
    finetune: str = choice("lora", "lora", "last_blocks", "full")
    lora_rank: int = bounded(4, 1)
    lora_alpha: float = bounded(8.0, 0.0)


@MODELS.register("clip", options=CLIPOptions,
                 help="open_clip CLIP (model.clip.clip_config: tiny | an open_clip name | JSON path), "
                      "fine-tuned by model.clip.finetune: lora | last_blocks | full; symmetric InfoNCE")
def _clip(cfg: ModelConfig, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    model = build_clip(cfg)
    check_image_size(model, input_shape)
    return ContrastiveCLIP(model)


def check_image_size(model: nn.Module, input_shape: tuple[int, ...]) -> None:
    """A clear error when the data's images are not the size the image tower was built for (a
    ViT's position embedding has one row per patch of that size, and open_clip's own message is a
    tensor-shape mismatch deep in the forward)."""
    size = getattr(model.visual, "image_size", None)
    size = (size, size) if isinstance(size, int) else tuple(size) if size is not None else None
    if size is not None and tuple(input_shape[-2:]) != size:
        raise ValueError(f"the data's images are {input_shape[-2]}x{input_shape[-1]} pixels but the CLIP model's image tower "
                         f"reads {size[0]}x{size[1]}: set image_size = {size[0]} in the dataset's table (e.g. "
                         f"[data.captions_synth] image_size = {size[0]}), or choose a model.clip.clip_config for "
                         f"{input_shape[-1]}-pixel images")
