"""CLIP models from open_clip: offline build and tokenizer, LoRA / last-block / full fine-tuning
(only the allowed parameters train), local checkpoints only."""
import socket

import pytest
import torch
import torch.nn.functional as F

from p2pforget.config import ModelConfig
from p2pforget.models import FlatModel, build, clip


def _clip(**options) -> ModelConfig:
    return ModelConfig(kind="clip", tables={"clip": clip.CLIPOptions(**options)})


@pytest.fixture
def offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _batch():
    gen = torch.Generator().manual_seed(0)
    tok = clip.tokenizer(_clip())
    return torch.randn(4, 3, 32, 32, generator=gen), tok(["a red square", "a blue circle", "a small green star", "a big shape"])


def _contrastive(flat_model, flat, images, tokens):
    img, txt, scale = flat_model.forward(flat, images, tokens)
    logits = scale * img @ txt.T
    target = torch.arange(len(images))
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def test_model_and_tokenizer_build_offline(offline):
    model = build(_clip(), input_shape=(3, 32, 32), n_classes=0)
    images, tokens = _batch()
    assert tokens.shape == (4, 16) and tokens.dtype == torch.long
    img, txt, scale = model(images, tokens)
    assert img.shape == txt.shape == (4, 32) and float(scale.detach()) == pytest.approx(1 / 0.07, rel=1e-4)
    assert torch.allclose(img.norm(dim=-1), torch.ones(4), atol=1e-5)


ALLOWED = {
    "lora": lambda n: n == "logit_scale" or n.endswith((".A", ".B")),
    "last_blocks": lambda n: n in ("logit_scale", "text_projection", "visual.proj") or n.startswith(
        ("visual.transformer.resblocks.1.", "transformer.resblocks.1.", "visual.ln_post.", "ln_final.")),
    "full": lambda n: True,
}


@pytest.mark.parametrize("mode", ["lora", "last_blocks", "full"])
def test_only_the_parameters_the_finetune_mode_allows_change(mode):
    model = clip.build_clip(_clip(finetune=mode))
    fm = FlatModel(model)
    assert fm.names and all(ALLOWED[mode](n) for n in fm.names)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    assert not any(ALLOWED[mode](n) for n in frozen)
    images, tokens = _batch()
    flat = fm.init_vector(1, torch.float32)
    before = _contrastive(fm, flat, images, tokens)
    for _ in range(3):
        g = torch.func.grad(_contrastive, argnums=1)(fm, flat, images, tokens)
        flat = flat - 0.5 * g
    assert float(_contrastive(fm, flat, images, tokens)) < float(before)  # the trainable part learns
    for n, p in model.named_parameters():  # the module itself (frozen weights) never changes
        if n in frozen:
            assert torch.equal(p, frozen[n]), n


def test_lora_starts_from_the_frozen_backbone_and_init_never_resets_it():
    base = clip.build_clip(_clip(finetune="full"))
    lora = clip.build_clip(_clip())
    fm = FlatModel(lora)
    images, tokens = _batch()
    flat = fm.init_vector(7, torch.float32)
    out, ref = fm.forward(flat, images, tokens), base(images, tokens)
    assert torch.allclose(out[0], ref[0], atol=1e-6) and torch.allclose(out[1], ref[1], atol=1e-6)  # B = 0
    assert fm.dim < FlatModel(base).dim / 100


def test_pretrained_weights_only_from_a_local_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloads"):
        clip.build_clip(_clip(pretrained=str(tmp_path / "missing.pt")))
    source = clip.build_clip(_clip(finetune="full"))
    with torch.no_grad():
        source.text_projection.add_(1.0)
    torch.save(source.state_dict(), tmp_path / "ckpt.pt")
    loaded = clip.build_clip(_clip(finetune="full", pretrained=str(tmp_path / "ckpt.pt")))
    assert torch.equal(loaded.text_projection, source.text_projection)
    # what open_clip's trainer writes: DDP's "module." prefixes inside "state_dict", next to the epoch
    trainer = {"epoch": 3, "name": "run", "state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}
    torch.save(trainer, tmp_path / "epoch_3.pt")
    resumed = clip.build_clip(_clip(finetune="full", pretrained=str(tmp_path / "epoch_3.pt")))
    assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), source.state_dict().values()))
    with pytest.raises(ValueError, match="not an open_clip config"):
        clip.build_clip(_clip(clip_config="no-such-model"))


def test_shorter_token_rows_are_padded_to_the_text_context_and_longer_ones_are_refused():
    model = clip.ContrastiveCLIP(clip.build_clip(_clip()))
    _, tokens = _batch()                                   # [4, 16]: the tiny model's context
    end = int((tokens != 0).sum(dim=1).max())              # the longest caption's length, end token included
    with torch.no_grad():
        full, short = model.embed_texts(tokens), model.embed_texts(tokens[:, :end])
    assert end < 16 and torch.allclose(short, full, atol=1e-6)
    with pytest.raises(ValueError, match=r"context_length = 16 \(or less\) in the dataset's table"):
        model.embed_texts(torch.cat([tokens, tokens[:, :2]], dim=1))


def test_images_of_another_size_than_the_image_tower_reads_are_refused_by_name():
    with pytest.raises(ValueError, match=r"images are 16x16 pixels but the CLIP model's image tower reads 32x32: "
                                         r"set image_size = 32 in the dataset's table"):
        build(_clip(), input_shape=(3, 16, 16), n_classes=0)


def test_big_sets_are_embedded_in_chunks_with_the_same_embeddings(monkeypatch):
    from p2pforget import Engine, config

    engine = Engine(config=config.from_dict({"topology": {"n_clients": 2}, "model": {"kind": "clip"},
                                             "data": {"kind": "captions_synth", "n_samples_per_client": 4, "n_test": 10}}))
    flat, tokens = engine.params[0], engine.batches.extras_test["tokens"]
    with torch.no_grad():
        whole = (engine.model.call(flat, "embed_images", engine.batches.x_test),
                 engine.model.call(flat, "embed_texts", tokens.reshape(-1, tokens.shape[-1])))
        calls = []
        encode = engine.model.module.clip.encode_image
        monkeypatch.setattr(engine.model.module.clip, "encode_image", lambda x, **kw: calls.append(len(x)) or encode(x, **kw))
        monkeypatch.setattr(clip, "EMBED_PAIRS", 3)
        chunked = (engine.model.call(flat, "embed_images", engine.batches.x_test),
                   engine.model.call(flat, "embed_texts", tokens.reshape(-1, tokens.shape[-1])))
    assert calls == [3, 3, 3, 1]  # 10 images, 3 at a time
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
