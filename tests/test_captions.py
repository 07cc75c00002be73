"""Image-caption data: the procedural generator, and the Flickr30K / COCO loaders on small files
written in those formats."""
import dataclasses
import json

import numpy as np
import open_clip
import pytest
import torch

from p2pforget.config import DataConfig, ModelConfig
from p2pforget.data import build, captions


def _decode(tokens):
    tok = open_clip.tokenizer._tokenizer
    ids = [int(t) for t in tokens if t not in (0, tok.sot_token_id, tok.eot_token_id)]
    return tok.decode(ids).strip()


def test_synthetic_captions_describe_their_images():
    fd = build(DataConfig(kind="captions_synth", n_samples_per_client=15, n_test=20,
                          tables={"captions_synth": captions.SynthCaptionOptions(concept="colour")},
                          partition="by_class"), n_clients=5, seed=1)
    assert fd.x.shape == (5, 15, 3, 32, 32) and fd.extras["tokens"].shape == (5, 15, 5, 16)
    assert fd.extras_holdout["tokens"].shape[:3] == (5, 4, 5) and fd.extras_test["tokens"].shape == (20, 5, 16)
    assert fd.n_classes == len(captions.COLOURS)
    colours = tuple(captions.COLOURS)
    for i in range(5):
        for k in range(15):
            text = _decode(fd.extras["tokens"][i, k, 3])          # "a picture of a {colour} {shape}"
            words = text.split()
            assert words[:4] == ["a", "picture", "of", "a"] and words[5] in captions.SHAPES
            assert words[4] == colours[fd.y[i, k]]                 # the concept label is the caption's colour
            rgb = np.asarray(captions.COLOURS[words[4]])
            pixels = fd.x[i, k].reshape(3, -1).T * 0.25 + 0.5      # undo the standardization
            assert (np.abs(pixels - rgb).max(axis=1) < 0.15).sum() >= 10  # the image shows that colour
    # by concept: each client holds few of the five colours (contiguous shards of the sorted pool)
    assert max(len(np.unique(fd.y[i])) for i in range(5)) <= 3


def test_client_captions_give_each_client_colours_of_its_own():
    cfg = DataConfig(kind="captions_clients", n_samples_per_client=12, n_test=30, holdout_fraction=0.2)
    fd = build(cfg, n_clients=4, seed=3)
    assert fd.x.shape == (4, 12, 3, 32, 32) and fd.x_holdout.shape == (4, 3, 3, 32, 32)
    assert fd.holdout_counts.tolist() == [3] * 4 and fd.n_classes == 1 and not fd.y.any()
    named = set(captions.COLOURS)

    def colour_words(tokens):  # the colour word of "a picture of a {colour} {shape}", per pair
        return [_decode(t[3]).split()[4] for t in tokens]

    train = [colour_words(fd.extras["tokens"][i]) for i in range(4)]
    held = [colour_words(fd.extras_holdout["tokens"][i]) for i in range(4)]
    own = [set(words) - named for words in train]
    assert all(len(o) == 1 for o in own)                                          # colours_per_client = 1
    assert all(sum(w not in named for w in words) == 6 for words in train)        # own_share = 0.5 of 12
    assert len(set.union(*own)) == 4                                              # no two clients share one
    unseen = [set(words) - named for words in held]
    assert all(len(u) == 1 for u in unseen) and not set.union(*unseen) & set.union(*own)  # held out: never trained on
    assert set(colour_words(fd.extras_test["tokens"])) <= named                  # the test pairs: named colours only
    # an own colour is drawn in one RGB value of its own, unlike any named colour
    for i in range(4):
        mine = [k for k, w in enumerate(train[i]) if w not in named]
        pixels = fd.x[i, mine].transpose(0, 2, 3, 1).reshape(len(mine), -1, 3) * 0.25 + 0.5
        # the shape: pixels away from the image's median colour (its background, plus noise)
        away = np.linalg.norm(pixels - np.median(pixels, axis=1, keepdims=True), axis=2) > 0.15
        assert away.sum(axis=1).min() >= 10
        shape = np.array([np.median(p[a], axis=0) for p, a in zip(pixels, away)])
        assert np.ptp(shape, axis=0).max() < 0.1
        assert np.linalg.norm(np.asarray(tuple(captions.COLOURS.values())) - shape[0], axis=1).min() > 0.15
    again = build(cfg, n_clients=4, seed=3, clients=range(2, 4))
    assert np.array_equal(again.x, fd.x[2:]) and np.array_equal(again.extras_holdout["tokens"], fd.extras_holdout["tokens"][2:])
    assert build(dataclasses.replace(cfg, holdout_fraction=0.0), n_clients=4, seed=3).x_holdout is None
    with pytest.raises(ValueError, match="data.partition"):
        build(dataclasses.replace(cfg, partition="dirichlet"), n_clients=4, seed=3)


def test_distinct_colours_keep_their_distance_or_say_what_to_lower():
    r = np.random.default_rng(0)
    c = captions.distinct_colours(30, r)
    named = np.asarray(tuple(captions.COLOURS.values()))
    backgrounds = np.repeat(tuple(captions.BACKGROUNDS.values()), 3).reshape(-1, 3)
    every = np.vstack([named, backgrounds, c])
    d = np.linalg.norm(every[:, None] - every[None], axis=2)
    assert d[np.triu_indices(len(every), 1)].min() >= 0.2 and ((c >= 0.05) & (c <= 0.95)).all()
    with pytest.raises(ValueError, match="colours_per_client"):
        captions.distinct_colours(400, r)


def _png(path, rgb):
    from PIL import Image
    Image.fromarray(np.full((16, 16, 3), rgb, dtype=np.uint8)).save(path)


def test_flickr30k_and_coco_loaders_read_their_formats(tmp_path):
    folder = tmp_path / "flickr30k-images"
    folder.mkdir()
    entries = []
    for k in range(12):
        _png(folder / f"{k}.jpg".replace(".jpg", ".png"), (20 * k, 100, 200 - 10 * k))
        entries.append({"filename": f"{k}.png", "split": "train",
                        "sentences": [{"raw": f"photo number {k} caption {j}"} for j in range(5 if k else 3)]})
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps({"images": entries, "dataset": "flickr30k"}))
    cfg = DataConfig(kind="flickr30k", path=str(tmp_path / "dataset_flickr30k.json"), n_test=2,
                     tables={"flickr30k": captions.CaptionOptions(image_size=16)}, n_samples_per_client=4, holdout_fraction=0.0)
    fd = build(cfg, n_clients=2, seed=0)
    files, caps = captions.read_flickr30k(cfg.path)
    assert caps[0] == ["photo number 0 caption 0", "photo number 0 caption 1", "photo number 0 caption 2",
                       "photo number 0 caption 0", "photo number 0 caption 1"]  # three captions cycle to five
    seen = 0
    for i in range(2):
        for k in range(4):
            text = _decode(fd.extras["tokens"][i, k, 0])
            n = int(text.split("caption")[0].replace("photo number", "").replace(" ", ""))  # BPE splits digits
            assert fd.x.dtype == np.uint8 and fd.x[i, k][:, 0, 0].tolist() == [20 * n, 100, 200 - 10 * n]  # its image
            seen += 1
    assert seen == 8

    coco = {"images": [{"id": 10 + k, "file_name": f"{k}.png"} for k in range(6)],
            "annotations": [{"id": j, "image_id": 10 + k, "caption": f" a coco image {k} "} for k in range(6) for j in range(5)]}
    (tmp_path / "train2017").mkdir()
    for k in range(6):
        _png(tmp_path / "train2017" / f"{k}.png", (k, k, k))
    (tmp_path / "captions_train2017.json").write_text(json.dumps(coco))
    files, caps = captions.read_coco_captions(tmp_path / "captions_train2017.json")
    assert [f.name for f in files] == [f"{k}.png" for k in range(6)] and caps[2] == ["a coco image 2"] * 5


def test_caption_loaders_say_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset_flickr30k.json"):
        build(DataConfig(kind="flickr30k", path=str(tmp_path / "nope.json"), holdout_fraction=0.0), n_clients=2, seed=0)
    with pytest.raises(ValueError, match="needs data.path"):
        build(DataConfig(kind="coco_captions", holdout_fraction=0.0), n_clients=2, seed=0)
    with pytest.raises(ValueError, match="data.partition"):
        build(DataConfig(kind="coco_captions", path="x.json", partition="dirichlet", holdout_fraction=0.0), n_clients=2, seed=0)


def test_real_caption_images_are_preprocessed_as_the_clip_model_expects(tmp_path):
    """A non-square photo goes through the same steps as the transform open_clip builds from the
    model's own ``preprocess_cfg``: shortest side to the model's size (bicubic), centre crop, CLIP's
    mean and std; stored as uint8 pixels and decoded per batch, the very float32 numbers."""
    from PIL import Image

    from p2pforget.config import ModelConfig
    from p2pforget.models import clip

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (45, 70, 3), dtype=np.uint8)).save(tmp_path / "wide.png")
    entries = [{"filename": "wide.png", "split": "train", "sentences": [{"raw": "a wide photo"}]}] * 3
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps({"images": entries, "dataset": "flickr30k"}))
    model = clip.build_clip(ModelConfig(kind="clip"))
    size = model.visual.image_size[0] if isinstance(model.visual.image_size, tuple) else model.visual.image_size
    cfg = DataConfig(kind="flickr30k", path=str(tmp_path / "dataset_flickr30k.json"), n_test=1, holdout_fraction=0.0,
                     n_samples_per_client=2, tables={"flickr30k": captions.CaptionOptions(image_size=size)})
    fd = build(cfg, n_clients=1, seed=0)
    from open_clip.transform import PreprocessCfg, image_transform_v2

    preprocess = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)
    with Image.open(tmp_path / "wide.png") as im:
        reference = preprocess(im).numpy()
    assert fd.x.dtype == fd.x_test.dtype == np.uint8
    for stored in (fd.x[0, 0], fd.x_test[0]):
        assert np.array_equal(captions.decode_pixels(torch.as_tensor(stored), torch.float32).numpy(), reference)


def test_karpathy_splits_are_honoured(tmp_path):
    folder = tmp_path / "flickr30k-images"
    folder.mkdir()
    split_of = ["train"] * 6 + ["restval"] * 2 + ["val"] * 3 + ["test"] * 4
    entries = []
    for k, split in enumerate(split_of):
        _png(folder / f"{k}.png", (10 * k, 0, 0))
        entries.append({"filename": f"{k}.png", "split": split, "sentences": [{"raw": f"photo {split} {k}"}]})
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps({"images": entries, "dataset": "flickr30k"}))
    cfg = DataConfig(kind="flickr30k", path=str(tmp_path / "dataset_flickr30k.json"), n_test=3, holdout_fraction=0.0,
                     n_samples_per_client=4, tables={"flickr30k": captions.CaptionOptions(image_size=16)})
    fd = build(cfg, n_clients=2, seed=0)
    train_words = {_decode(t[0]).split()[1] for t in fd.extras["tokens"].reshape(-1, 5, fd.extras["tokens"].shape[-1])}
    test_words = {_decode(t[0]).split()[1] for t in fd.extras_test["tokens"]}
    assert train_words == {"train", "restval"} and test_words == {"test"} and len(fd.y_test) == 3
    with pytest.raises(ValueError, match=r"mark 4 pairs as split \"test\"; set data.n_test to at most 4"):
        build(dataclasses.replace(cfg, n_test=5), n_clients=2, seed=0)


def test_a_flickr30k_folder_and_a_trainer_checkpoint_run_on_the_engine_with_uint8_images(tmp_path):
    """The real-data path end to end: Karpathy JSON + image folder, an open_clip-trainer checkpoint
    (``{"state_dict": {"module.*"}}``), a round of training and a forget request. The images stay
    uint8 in the engine; the model decodes them per batch, and its loss equals that of the same
    batch decoded up front."""
    from PIL import Image

    from p2pforget import Engine, config, forget
    from p2pforget.models import clip

    folder = tmp_path / "flickr30k-images"
    folder.mkdir()
    rng = np.random.default_rng(1)
    entries = []
    for k in range(16):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"{k}.png")
        entries.append({"filename": f"{k}.png", "split": "test" if k < 4 else "train",
                        "sentences": [{"raw": f"photo {k} take {j}"} for j in range(5)]})
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps({"images": entries, "dataset": "flickr30k"}))
    source = clip.build_clip(ModelConfig(kind="clip", tables={"clip": clip.CLIPOptions(finetune="full")}))
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "epoch_1.pt")
    cfg = config.from_dict({
        "run": {"seed": 0, "rounds": 1}, "topology": {"kind": "ring", "n_clients": 3},
        "data": {"kind": "flickr30k", "path": str(tmp_path / "dataset_flickr30k.json"), "n_samples_per_client": 3,
                 "n_test": 4, "holdout_fraction": 0.25, "flickr30k": {"image_size": 32}},
        "model": {"kind": "clip", "clip": {"pretrained": str(tmp_path / "epoch_1.pt")}},
        "train": {"lr": 0.01, "local_steps": 1, "batch_size": 0}, "audit": {"after_forget": False}})
    engine = Engine(config=cfg)
    assert engine.batches.x.dtype == torch.uint8 and engine.batches.x_test.dtype == torch.uint8
    batch = {k: v[0] for k, v in engine.batches.full().items()}
    decoded = batch | {"x": captions.decode_pixels(batch["x"], torch.float32)}
    flat = engine.params[0]
    assert torch.equal(engine.task.data_loss(flat, batch), engine.task.data_loss(flat, decoded))
    engine.train(progress=False)
    result = forget(engine, clients=[1], method="finetune", rounds=1, progress=False)
    assert result.metrics["unlearned"]["TA"]["mean"] >= 0.0 and engine.batches.x.dtype == torch.uint8
