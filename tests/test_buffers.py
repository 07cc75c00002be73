"""Models with running statistics (BatchNorm): per-client state, updated by each local step like a
per-client ``nn.Module`` in ``train()`` mode, evaluated like one in ``eval()`` mode, communicated by
the model's buffer rule and checkpointed with the run."""
import copy

import numpy as np
import pytest
import torch

from p2pforget import Engine, config, experiment, history

# 16x16 images keep 2x2 positions in ResNet-18's last stage: with 8 per batch, every BatchNorm
# averages over at least 32 values
RESNET = {"run": {"rounds": 2, "eval_every": 0}, "topology": {"n_clients": 2},
          "data": {"kind": "pacs_like", "n_samples_per_client": 16, "n_test": 12, "pacs_like": {"image_size": 16}},
          "model": {"kind": "resnet18"}, "train": {"batch_size": 8, "lr": 0.01, "weight_decay": 0.0}}


def _cfg(base=RESNET, **sections):
    out = copy.deepcopy(base)
    for name, values in sections.items():
        out[name] = out.get(name, {}) | values
    return config.from_dict(out)


def _client_module(engine: Engine, i: int, params: torch.Tensor, buffers: torch.Tensor) -> torch.nn.Module:
    """Client ``i`` as a plain ``nn.Module`` holding the given parameters and statistics."""
    module = copy.deepcopy(engine.model.module)
    state = engine.model.unflatten(params[i].clone()) | engine.model.unflatten_buffers(buffers[i].clone())
    module.load_state_dict(state, strict=False)
    return module


def test_resnet18_batchnorm_statistics_and_steps_equal_a_per_client_module_loop():
    """Every client's running statistics after two rounds of local steps equal those of its own
    ``nn.Module`` fed the same batches at the same parameters in ``train()`` mode; one local step
    equals ``torch.optim.SGD`` on that module; test accuracy is the module's in ``eval()`` mode."""
    engine = Engine(config=_cfg(model={"resnet18": {"buffers": "local"}}))
    assert engine.model.buffer_dim > 0 and engine.buffers.shape == (2, engine.model.buffer_dim)
    loop = engine.buffers.clone()
    for _ in range(2):
        params, batch = engine.params.clone(), engine.batches.minibatch((engine.round, 0))
        stepped = engine.compute.local_steps(params)
        engine.buffers = loop.clone()  # local_steps updated them: start the round from the loop's again
        for i in range(2):
            module = _client_module(engine, i, params, loop)
            module.train()
            sgd = torch.optim.SGD(module.parameters(), lr=0.01)
            loss = torch.nn.functional.cross_entropy(module(batch["x"][i]), batch["y"][i])
            loss.backward()
            sgd.step()
            loop[i] = torch.cat([dict(module.named_buffers())[n].reshape(-1).to(loop.dtype)
                                 for n in engine.model.buffer_names])
            mine = torch.cat([p.detach().reshape(-1) for p in module.parameters()])
            torch.testing.assert_close(stepped[i], mine, rtol=1e-4, atol=1e-5)
        engine.step()
    torch.testing.assert_close(engine.buffers, loop, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(engine.buffers, engine.init_buffers)  # they did move

    acc = engine.evaluate()["test_acc"]
    for i in range(2):
        module = _client_module(engine, i, engine.params, engine.buffers)
        module.eval()
        with torch.no_grad():
            expected = (module(engine.batches.x_test).argmax(1) == engine.batches.y_test).double().mean()
        assert acc[i] == pytest.approx(float(expected))


SMALL = {"run": {"rounds": 2, "eval_every": 0}, "topology": {"n_clients": 5},
         "data": {"kind": "digits", "n_samples_per_client": 8, "n_test": 12}, "model": {"kind": "bn_mlp"},
         "train": {"batch_size": 4, "lr": 0.1, "dtype": "float64"}}


@pytest.fixture(autouse=True)
def bn_mlp():
    """A small model with BatchNorm1d, registered for these tests only."""
    from p2pforget.registry import MODELS

    def build(cfg, input_shape, n_classes):
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(int(np.prod(input_shape)), 6),
                                   torch.nn.BatchNorm1d(6), torch.nn.ReLU(), torch.nn.Linear(6, n_classes))

    MODELS.register("bn_mlp")(build)
    yield
    MODELS.unregister("bn_mlp")


def test_checkpoint_resume_keeps_the_statistics_bit_identical(tmp_path):
    """A run stopped after 2 rounds and resumed to 4 equals one that ran 4 rounds, statistics
    included (they are in the run file's checkpoint)."""
    whole = experiment.run(_cfg(SMALL, run={"rounds": 4}), out=tmp_path / "whole", progress=False)
    experiment.run(_cfg(SMALL), out=tmp_path / "part", progress=False)
    resumed = experiment.run(_cfg(SMALL, run={"rounds": 4}), out=tmp_path / "part", resume=True, progress=False)
    assert not torch.equal(whole.engine.buffers, whole.engine.init_buffers)
    assert torch.equal(resumed.engine.buffers, whole.engine.buffers)
    assert torch.equal(resumed.engine.params, whole.engine.params)
    stored = history.read_h5(tmp_path / "part" / "history.h5")
    assert any(k.endswith("buffers") for k in stored.arrays)


def test_the_average_rule_mixes_statistics_with_the_rounds_matrix_and_counts_their_bytes():
    engine = Engine(config=_cfg(SMALL))
    before, params, batch = engine.buffers.clone(), engine.params.clone(), engine.batches.minibatch((0, 0))
    updated = torch.stack([engine.model.updated_buffers(params[i], before[i], batch["x"][i]) for i in range(5)])
    sent_without = engine.network.message_bytes(engine.network.mixing_at(0), 1)
    engine.step()
    W = engine.network.mixing_at(0).toarray()
    np.testing.assert_allclose(engine.buffers.numpy(), W @ updated.numpy(), rtol=0, atol=1e-12)
    assert engine.metrics["bytes_sent"][-1] == pytest.approx(sent_without * (1 + engine.model.buffer_dim / engine.dim))


def test_the_star_averages_statistics_like_fedavg_and_the_local_rule_keeps_them():
    star = Engine(config=_cfg(SMALL, topology={"kind": "star"}))
    star.step()
    assert torch.allclose(star.buffers, star.buffers[:1].expand_as(star.buffers))
    local = Engine(config=_cfg(SMALL))
    local.model.buffer_rule = "local"
    before, params, batch = local.buffers.clone(), local.params.clone(), local.batches.minibatch((0, 0))
    local.step()
    for i in range(5):
        torch.testing.assert_close(local.buffers[i], local.model.updated_buffers(params[i], before[i], batch["x"][i]))


def test_a_padded_batch_is_refused_naming_the_client_and_the_fix():
    engine = Engine(config=_cfg(SMALL, train={"batch_size": 0}, data={"quantity_skew": 1.0}))
    with pytest.raises(ValueError, match=r"running statistics .* client \d+ has fewer samples than its batch .* "
                                         r"set train.batch_size"):
        engine.step()


def test_groupnorm_resnet18_keeps_no_statistics_and_trains():
    engine = Engine(config=_cfg(model={"resnet18": {"norm": "group"}}, run={"rounds": 1}))
    assert engine.model.buffer_dim == 0 and engine.buffers.shape == (2, 0)
    start = engine.params.clone()
    engine.train(progress=False)
    assert torch.isfinite(engine.params).all() and not torch.equal(engine.params, start)


def test_a_forget_request_keeps_the_statistics_in_the_checkpoint_it_writes(tmp_path):
    """The checkpoint a forget request writes (training continues from it) holds the statistics
    the method left, and a resumed run starts from them."""
    run = tmp_path / "run"
    experiment.run(_cfg(SMALL), out=run, progress=False)
    experiment.forget_run(run, clients=[1], overrides=["unlearn.method=finetune", "unlearn.finetune.rounds=1"],
                          reference=False, progress=False)
    engine, _ = experiment.load_run(run)
    stored = history.read_h5(run / "history.h5").arrays["checkpoint/buffers"]
    np.testing.assert_array_equal(engine.network.gather(engine.buffers), stored)
    assert not torch.equal(engine.buffers, engine.init_buffers)
    stored_request = {"method": "finetune", "finetune": {"rounds": 1}}  # the run's config now names the request's method
    more = experiment.run(_cfg(SMALL, run={"rounds": 5}, unlearn=stored_request), out=run, resume=True, progress=False)
    assert more.engine.round == 5 and torch.isfinite(more.engine.buffers).all()
