"""The trainer: exact resume, EMA, data inputs, checkpoints, settings."""

import json
import math
import warnings

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import shortcut_fast as sf
from shortcut_fast.data.batches import BatchSource


def make_model(seed=0, num_classes=3):
    torch.manual_seed(seed)
    return sf.ShortcutMLP(dim=2, hidden_size=16, depth=2, num_classes=num_classes, min_step=1 / 8)


def make_data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, 2, generator=g) * 0.1 + torch.stack([y.float(), -y.float()], 1)
    return x, y


def config(**kw):
    base = {
        "batch_size": 8,
        "lr": 1e-2,
        "ema_decay": 0.9,
        "warmup_steps": 3,
        "progress": False,
        "log_every": 2,
        "seed": 3,
        "shortcut": sf.ShortcutConfig(min_step=1 / 8),
    }
    return sf.TrainConfig(**{**base, **kw})


def state(trainer):
    out = {f"w.{k}": v.clone() for k, v in trainer.model.state_dict().items()}
    out.update({f"ema.{k}": v.clone() for k, v in trainer.ema_model.state_dict().items()})
    for i, s in trainer.optimizer.state_dict()["state"].items():
        out.update({f"opt.{i}.{k}": torch.as_tensor(v).clone() for k, v in s.items()})
    return out


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
@pytest.mark.parametrize("as_dataset", [False, True])
def test_resume_continues_exactly(tmp_path, as_dataset):
    x, y = make_data(40)  # 5 batches an epoch: the resumed part crosses an epoch boundary
    data = TensorDataset(x, y) if as_dataset else (x, y)
    straight = sf.Trainer(make_model(), data, config())
    straight.fit(11)

    first = sf.Trainer(make_model(), data, config())
    first.fit(6)
    first.save(tmp_path / "ckpt")
    resumed = sf.Trainer.resume(tmp_path / "ckpt", data, progress=False)
    assert resumed.step == 6
    resumed.fit(5)
    assert resumed.step == 11
    assert_same_state(state(straight), state(resumed))


def test_resume_custom_model_needs_the_module(tmp_path):
    from helpers import TinyCustomModel

    x = torch.randn(32, 3)
    trainer = sf.Trainer(TinyCustomModel(), x, config(shortcut=sf.ShortcutConfig()))
    trainer.fit(2)
    trainer.save(tmp_path / "c")
    with pytest.raises(ValueError, match="custom model"):
        sf.Trainer.resume(tmp_path / "c", x)
    resumed = sf.Trainer.resume(tmp_path / "c", x, model=TinyCustomModel())
    assert resumed.step == 2
    for a, b in zip(resumed.model.parameters(), trainer.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_ema_update_rule():
    x, y = make_data(16)
    trainer = sf.Trainer(make_model(), (x, y), config(ema_decay=0.75))
    before = [p.detach().clone() for p in trainer.ema_model.parameters()]
    trainer.fit(1)
    for e0, e1, w1 in zip(before, trainer.ema_model.parameters(), trainer.model.parameters(), strict=True):
        torch.testing.assert_close(e1, 0.75 * e0 + 0.25 * w1.detach())
    assert not any(p.requires_grad for p in trainer.ema_model.parameters())


def test_fit_warns_once_while_the_ema_still_holds_much_of_the_initial_weights():
    x, y = make_data(16)
    trainer = sf.Trainer(make_model(), (x, y), config(ema_decay=0.9))
    with pytest.warns(UserWarning, match=r"after 3 steps the EMA model \(ema_decay=0.9\) still holds 73%") as seen:
        trainer.fit(3)  # 0.9 ** 3 of the EMA is the initial weights
    assert "train to about 29 steps" in str(seen[0].message)  # 0.9 ** 29 < 0.05 <= 0.9 ** 28
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trainer.fit(2)  # warned once
        settled = sf.Trainer(make_model(), (x, y), config(ema_decay=0.5))
        settled.fit(5)  # 0.5 ** 5 = 3%


@pytest.mark.slow
def test_warmup_and_learning_rate():
    x, y = make_data(16)
    trainer = sf.Trainer(make_model(), (x, y), config(lr=0.1, warmup_steps=4))
    lrs = []
    for _ in range(6):
        trainer.train_step(*next(trainer.data))
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
    assert lrs == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])


@pytest.mark.slow
def test_cosine_decay_after_warmup():
    x, y = make_data(16)
    trainer = sf.Trainer(make_model(), (x, y), config(lr=0.1, warmup_steps=2, decay_steps=6))
    lrs = []
    for _ in range(8):
        trainer.train_step(*next(trainer.data))
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
    cosine = [0.5 * (1 + math.cos(math.pi * min(s, 6) / 6)) for s in range(1, 9)]
    warm = [0.5, 1, 1, 1, 1, 1, 1, 1]
    assert lrs == pytest.approx([0.1 * w * c for w, c in zip(warm, cosine, strict=True)])
    assert lrs[-1] == 0.0


@pytest.mark.slow
def test_training_reduces_the_loss():
    x, y = make_data(256)
    trainer = sf.Trainer(make_model(), (x, y), config(batch_size=64, lr=3e-3, log_every=1, warmup_steps=0))
    history = trainer.fit(150)
    first = sum(r["loss"] for r in history[:10]) / 10
    last = sum(r["loss"] for r in history[-10:]) / 10
    assert last < 0.5 * first


@pytest.mark.slow
def test_save_writes_no_pickle_and_loads_ema(tmp_path):
    x, y = make_data(32)
    trainer = sf.Trainer(make_model(), (x, y), config())
    trainer.fit(3)
    path = trainer.save(tmp_path / "run")
    names = sorted(p.name for p in path.iterdir())
    assert names == ["config.json", "ema.safetensors", "model.safetensors", "state.safetensors", "trainer.json"]
    meta = json.loads((path / "trainer.json").read_text())
    assert meta["step"] == 3 and meta["train_config"]["batch_size"] == 8
    ema = sf.load_model(path)
    live = sf.load_model(path, ema=False)
    for a, b in zip(ema.parameters(), trainer.ema_model.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(live.parameters(), trainer.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not list(tmp_path.glob(".run.*"))


@pytest.mark.slow
def test_checkpoint_every_keeps_the_newest(tmp_path):
    x, y = make_data(32)
    root = tmp_path / "ck"
    trainer = sf.Trainer(make_model(), (x, y), config(checkpoint_every=2, checkpoint_dir=str(root), keep_checkpoints=2))
    trainer.fit(7)
    # saves at 2, 4, 6 and the end (7); the two newest stay, `latest` names the last
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000006", "step_00000007"]
    assert (root / "latest").read_text().strip() == "step_00000007"
    assert json.loads((root / "step_00000007" / "trainer.json").read_text())["step"] == 7
    resumed = sf.Trainer.resume(root, (x, y))
    assert resumed.step == 7
    for a, b in zip(sf.load_model(root).parameters(), trainer.ema_model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_latest_pointing_nowhere_is_named(tmp_path):
    (tmp_path / "latest").write_text("step_00000009\n")
    with pytest.raises(ValueError, match="latest"):
        sf.Trainer.resume(tmp_path, make_data(32))


def test_damaged_checkpoint_is_named(tmp_path):
    x, y = make_data(32)
    trainer = sf.Trainer(make_model(), (x, y), config())
    trainer.fit(1)
    path = trainer.save(tmp_path / "run")
    blob = (path / "state.safetensors").read_bytes()
    (path / "state.safetensors").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="state.safetensors"):
        sf.Trainer.resume(path, (x, y))


# ---------------------------------------------------------------- data inputs
@pytest.mark.slow
def test_every_data_form_trains():
    x, y = make_data(32)
    for data in [(x, y), TensorDataset(x, y), DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)]:
        trainer = sf.Trainer(make_model(), data, config())
        trainer.fit(5)
        assert trainer.step == 5
    trainer = sf.Trainer(make_model(num_classes=0), x, config())
    trainer.fit(2)


def test_batch_source_epochs_are_permutations():
    x = torch.arange(20).float()[:, None]
    src = BatchSource(x, batch_size=5, seed=0)
    epoch = torch.cat([next(src)[0] for _ in range(4)]).flatten()
    assert sorted(epoch.tolist()) == list(range(20))
    nxt = torch.cat([next(src)[0] for _ in range(4)]).flatten()
    assert sorted(nxt.tolist()) == list(range(20)) and not torch.equal(epoch, nxt)


def test_batch_source_shards_by_rank():
    x = torch.arange(24).float()[:, None]
    parts = [BatchSource(x, batch_size=4, seed=1, rank=r, world=3) for r in range(3)]
    seen = torch.cat([next(p)[0] for p in parts for _ in range(2)]).flatten()
    assert sorted(seen.tolist()) == list(range(24))


@pytest.mark.parametrize(
    "data, err, match",
    [
        ([1, 2, 3], TypeError, "data must be"),
        ((torch.randn(10, 2), torch.zeros(9, dtype=torch.long)), ValueError, "differ in length"),
        ((torch.randn(10, 2), torch.zeros(10)), TypeError, "integer"),
        (torch.randn(4, 2), ValueError, "fewer than one batch"),
    ],
)
def test_bad_data(data, err, match):
    with pytest.raises(err, match=match):
        sf.Trainer(make_model(), data, config())


def test_labels_for_unconditional_model_rejected():
    x, y = make_data(32)
    with pytest.raises(ValueError, match="unconditional"):
        sf.Trainer(make_model(num_classes=0), (x, y), config())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_size": 0},
        {"lr": 0.0},
        {"lr": float("nan")},
        {"ema_decay": 1.5},
        {"betas": (0.9,)},
        {"grad_clip": -1.0},
        {"warmup_steps": -1},
        {"seed": True},
    ],
)
def test_train_config_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        sf.TrainConfig(**kwargs)


def test_train_config_round_trip():
    cfg = config(betas=(0.8, 0.95))
    back = sf.TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg
    with pytest.raises(ValueError, match="unknown"):
        sf.TrainConfig.from_dict({"learning_rate": 1.0})
    with pytest.raises(ValueError):
        sf.Trainer(make_model(), make_data(32), config()).fit(-1)
