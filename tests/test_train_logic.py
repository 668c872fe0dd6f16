"""Training logic without Ray: loss normalisation, schedule, run directory, settings, curves."""
from __future__ import annotations

import json

import pytest
import torch

from roadseg_dist import settings
from roadseg_dist.labels import IGNORE_INDEX
from roadseg_dist.train import losses, loop, rundir as run, saving
from roadseg_dist.train.plots import render_curves
from roadseg_dist.train.settings import TrainSettings


def test_criterion_sum_over_norm_is_mean_ce_ignoring_255():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 19, 6, 7, generator=g)
    target = torch.randint(0, 19, (2, 6, 7), generator=g)
    target[0, :2] = IGNORE_INDEX
    weight = torch.rand(19, generator=g) + 0.5
    for w in (None, weight):
        loss_sum, norm = losses.cross_entropy(logits, target, w)
        expected = torch.nn.functional.cross_entropy(logits, target, weight=w, ignore_index=IGNORE_INDEX)
        assert torch.allclose(loss_sum / norm, expected, atol=1e-6)


def test_split_batches_normalised_globally_equal_whole_batch():
    """What DDP does with ddp_loss: per-part sums over the global normaliser add up to the full mean."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 19, 5, 5, generator=g)
    target = torch.randint(0, 19, (4, 5, 5), generator=g)
    target[:3, :4] = IGNORE_INDEX  # parts with very different labelled pixel counts
    parts = [losses.cross_entropy(logits[i:i + 2], target[i:i + 2]) for i in (0, 2)]
    total_norm = sum(n for _, n in parts)
    combined = sum(s for s, _ in parts) / total_norm
    whole = torch.nn.functional.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
    assert torch.allclose(combined, whole, atol=1e-6)
    # while the naive mean of per-worker means is not the same
    naive = sum(s / n for s, n in parts) / 2
    assert not torch.allclose(naive, whole, atol=1e-3)


def test_poly_schedule_with_warmup():
    f = loop.poly_schedule(total_steps=100, warmup_steps=10, power=0.9)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5 ** 0.9)
    assert f(100) == 0.0 and f(150) == 0.0
    values = [f(s) for s in range(10, 101)]
    assert values == sorted(values, reverse=True)


def test_append_metrics_replaces_lines_of_a_dead_attempt(tmp_path):
    rd = str(tmp_path / "run")
    for e in (1, 2, 3):
        run.append_metrics(rd, {"epoch": e, "train_loss": 1.0 / e})
    run.append_metrics(rd, {"epoch": 2, "train_loss": 0.4})  # restart from epoch 1's checkpoint
    assert [(r["epoch"], r["train_loss"]) for r in run.read_metrics(rd)] == [(1, 1.0), (2, 0.4)]


def test_best_checkpoint_and_listing(tmp_path):
    rd = str(tmp_path / "run")
    for name, miou in (("checkpoint_epoch0001", 0.3), ("checkpoint_epoch0002", 0.5),
                       ("checkpoint_best-epoch0002", 0.5), ("checkpoint_epoch0003", 0.4)):
        (tmp_path / "run" / name).mkdir(parents=True)
        epoch = int(name[-4:])
        (tmp_path / "run" / name / "meta.json").write_text(json.dumps(
            {"arch": "unet", "num_classes": 19, "epoch": epoch, "metrics": {"val_miou": miou}}))
    (tmp_path / "run" / "checkpoint_unfinished").mkdir()  # no meta.json: not a checkpoint yet
    assert len(run.checkpoint_dirs(rd)) == 4
    url, meta = run.best_checkpoint(rd)
    assert meta["metrics"]["val_miou"] == 0.5 and url.endswith("epoch0002")
    assert run.run_exists(rd) and not run.run_exists(str(tmp_path / "other"))


def test_train_settings_yaml_and_flags(tmp_path):
    cfg = tmp_path / "t.yaml"
    cfg.write_text("data: s3://b/shards\nstorage: /tmp/runs\nname: r1\ncrop: 64x96\nepochs: 7\n"
                   "scale_range: [0.75, 1.5]\namp: fp16\n")
    s = settings.build(TrainSettings, str(cfg), epochs=3, gpu=True)
    assert (s.crop, s.epochs, s.gpu, s.amp, s.scale_range) == ((64, 96), 3, True, "fp16", (0.75, 1.5))
    again = settings.build(TrainSettings, s.to_config())  # what the workers rebuild
    assert again == s
    with pytest.raises(Exception, match="epochs"):
        settings.build(TrainSettings, str(cfg), epochs=0)
    with pytest.raises(Exception, match="missing"):
        settings.build(TrainSettings, None, data="x")


def test_render_curves_png():
    records = [{"epoch": e, "train_loss": 2.0 / e, "val_miou": 0.1 * e, "val_pixel_acc": 0.2 * e}
               for e in (1, 2, 3)]
    png = render_curves(records, "demo")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_restore_brings_back_weights_optimizer_schedule_and_scaler(tmp_path):
    from roadseg_dist.models.checkpoint import save_checkpoint
    from roadseg_dist.models.zoo import build_model

    def setup():
        torch.manual_seed(0)
        model = build_model("unet", base_channels=4)
        opt = loop.build_optimizer(model, "adamw", 1e-3, 1e-4, 0.9)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, loop.poly_schedule(20, 2))
        return model, opt, sched, torch.amp.GradScaler("cuda", enabled=False)

    model, opt, sched, scaler = setup()
    batch = {"image": torch.randint(0, 255, (2, 32, 32, 3), dtype=torch.uint8),
             "label": torch.randint(0, 19, (2, 32, 32), dtype=torch.uint8)}
    loop.train_one_epoch(model, [batch] * 3, opt, sched, scaler, torch.device("cpu"))
    state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
             "epoch": 4}
    save_checkpoint(str(tmp_path / "ck"), model, epoch=4, metrics={"val_miou": 0.1}, train_config={},
                    input_size=[32, 32], train_state=state)

    model2, opt2, sched2, scaler2 = setup()
    assert saving.restore(str(tmp_path / "ck"), model2, opt2, sched2, scaler2) == 4
    assert sched2.last_epoch == 3 and sched2.get_last_lr() == sched.get_last_lr()
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    exp_avg = lambda o: [s["exp_avg"] for s in o.state_dict()["state"].values()]
    assert all(torch.equal(a, b) for a, b in zip(exp_avg(opt), exp_avg(opt2)))


def test_cli_train_flags_and_config_reach_the_checks(tmp_path):
    from click.testing import CliRunner

    from roadseg_dist.cli import main

    cfg = tmp_path / "t.yaml"
    cfg.write_text(f"data: {tmp_path / 'no-shards'}\nstorage: {tmp_path / 'runs'}\nname: r\n")
    result = CliRunner().invoke(main, ["train", "--config", str(cfg), "--epochs", "2"])
    assert result.exit_code != 0 and "--data: cannot read the train index" in result.output
    result = CliRunner().invoke(main, ["train", "--config", str(cfg), "--crop", "12"])
    assert result.exit_code != 0 and "HEIGHTxWIDTH" in result.output


def test_class_weights_from_stats_in_class_order():
    from roadseg_dist.labels import CLASSES

    w = loop.class_weight_tensor({name: float(i) for i, name in enumerate(CLASSES)})
    assert w.tolist() == [float(i) for i in range(19)]
    with pytest.raises(ValueError, match="road"):
        loop.class_weight_tensor({"sky": 1.0})


def test_default_resources_leave_room_for_workers_and_decoding():
    """The defaults themselves fit: 2 cores and 2 CPU workers leave a whole decode task; a GPU node gives
    each GPU worker 2 CPUs and the decoding the rest."""
    from roadseg_dist.ops.resources import Offer
    from roadseg_dist.train import driver

    s = settings.build(TrainSettings, None, data="d", storage="s", name="n")
    plan, feed = driver.size_feed(s, Offer(cpus=2, largest_node_cpus=2, where="the local Ray"))
    assert (plan.cpus_per_worker, feed.ingest_cpus, feed.task_cpus) == (0.5, 0.5, 1.0)
    assert 2 * plan.cpus_per_worker + feed.task_cpus <= 2 and feed.pin_memory is False
    gpu = settings.build(TrainSettings, None, data="d", storage="s", name="n", gpu=True, num_workers=8)
    plan, feed = driver.size_feed(gpu, Offer(cpus=96, gpus=8, largest_node_cpus=96))
    assert (plan.cpus_per_worker, feed.ingest_cpus, feed.task_cpus, feed.prefetch_batches) == (2.0, 10.0, 1.0, 4)
    assert feed.pin_memory and "10 CPU of decode/augment per worker" in feed.describe(8)


def test_init_from_must_hold_the_model_this_run_builds(tmp_path):
    from roadseg_dist.models.checkpoint import save_checkpoint
    from roadseg_dist.models.zoo import build_model
    from roadseg_dist.train.driver import check_init_from

    save_checkpoint(str(tmp_path / "u8"), build_model("unet", base_channels=8))
    save_checkpoint(str(tmp_path / "u8-5"), build_model("unet", base_channels=8, num_classes=5))

    def run(**kw):
        return settings.build(TrainSettings, None, data="d", storage="s", name="n", **kw)

    check_init_from(run(init_from=str(tmp_path / "u8"), base_channels=8))  # fits: no error
    with pytest.raises(settings.SettingsError, match=r"holds unet .*8.* but this run builds unet .*16"):
        check_init_from(run(init_from=str(tmp_path / "u8"), base_channels=16))
    with pytest.raises(settings.SettingsError, match="with 5 classes, but this run builds .* with 19"):
        check_init_from(run(init_from=str(tmp_path / "u8-5"), base_channels=8))
