"""Self-supervised backbone adaptation: training, checkpoints, export, data parallelism.

A tiny configuration (ResNet-18 from scratch at 16 px, 8 PneumoniaMNIST images per step, a
constant learning rate) shares one compiled step across the tests.
"""

import dataclasses
import importlib.resources
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from msde_jax.backbones.registry import backbone_spec
from msde_jax.backbones.weight_files import read_safetensors_metadata
from msde_jax.cli import main
from msde_jax.embedder import Embedder
from msde_jax.ssl import (
    TrainConfig,
    load_checkpoint,
    make_train_step,
    save_backbone,
    train_backbone,
)
from msde_jax.ssl.config import check_training_memory
from msde_jax.ssl.train import (
    BACKBONE,
    CHECKPOINT,
    batch_indices,
    init_state,
    other_indices,
    prepare_images,
)

# One worker runs this file under pytest-xdist (`--dist loadfile` in pyproject.toml), so the
# compiled step is shared by every test.

TINY = TrainConfig(
    backbone="resnet18",
    task="cutpaste",
    init="scratch",
    image_size=16,
    batch_size=8,
    steps=30,
    learning_rate=1e-3,
    warmup_steps=0,
    schedule="constant",
    head_hidden=64,
    log_every=10,
)


@pytest.fixture(scope="module")
def normals():
    path = importlib.resources.files("msde_jax") / "data/pneumoniamnist.npz"
    with np.load(path) as z:
        return z["train_normal"][:24]


@pytest.fixture(scope="module")
def trained(normals):
    return train_backbone(normals, TINY, progress=False)


def _assert_trees_equal(a, b):
    flat_a, tree_a = jax.tree.flatten(a)
    flat_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(flat_a, flat_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_tiny_run_loss_goes_down(trained):
    losses = [h["loss"] for h in trained.history]
    assert [h["step"] for h in trained.history] == [10, 20, 30]
    # Chance level of the 3-way task is log 3 ≈ 1.10.
    assert losses[-1] < losses[0] - 0.1, losses
    assert losses[-1] < np.log(3), losses
    assert int(trained.state.step) == TINY.steps


def test_batch_norm_statistics_are_updated_by_training(trained):
    # Seeded scratch init has running means 0 and variances 1 everywhere.
    means = [
        np.asarray(v)
        for p, v in jax.tree_util.tree_leaves_with_path(trained.variables["batch_stats"])
        if "mean" in jax.tree_util.keystr(p)
    ]
    assert means
    assert all(np.isfinite(m).all() for m in means)
    assert max(np.abs(m).max() for m in means) > 1e-2


def test_adapted_backbone_loads_into_embedder_with_frozen_statistics(trained, normals, tmp_path):
    path = save_backbone(tmp_path / "adapted.safetensors", trained.state, TINY, note="test")
    meta = read_safetensors_metadata(path)
    assert meta["backbone"] == "resnet18"
    assert meta["kind"] == "backbone"
    assert json.loads(meta["training"])["config"]["task"] == "cutpaste"

    embedder = Embedder("resnet18", weights=path, image_size=16, batch_size=8, progress=False)
    batch = embedder.embed(normals[:8])
    # The same numbers as running the trained variables in inference mode by hand.
    spec = backbone_spec("resnet18")
    x = np.stack([embedder.preprocess(img) for img in normals[:8]])
    direct = spec.build(0).apply(trained.variables, spec.normalize(x), train=False).pooled
    np.testing.assert_allclose(batch, direct, rtol=1e-4, atol=1e-5)
    # Frozen statistics: one image alone embeds exactly as inside a batch.
    np.testing.assert_allclose(embedder.embed(normals[3:4])[0], batch[3], rtol=1e-5, atol=1e-6)
    # In-memory variables work too, and fingerprint identically to the file.
    same = Embedder("resnet18", weights=trained.variables, image_size=16, progress=False)
    assert same.weights_sha256 == embedder.weights_sha256
    assert embedder.weights_sha256 != Embedder("resnet18", weights="random").weights_sha256


def test_adapted_backbone_refuses_another_architecture(trained, tmp_path):
    path = save_backbone(tmp_path / "adapted.safetensors", trained.state, TINY)
    with pytest.raises(ValueError, match="holds resnet18 weights"):
        Embedder("resnet34", weights=path)
    broken = dict(trained.variables)
    broken["params"] = {k: v for k, v in broken["params"].items() if k != "conv1"}
    with pytest.raises(ValueError, match="missing: params/conv1/kernel"):
        Embedder("resnet18", weights=broken)


def test_checkpoint_resume_takes_the_same_steps(normals, trained, tmp_path):
    config = dataclasses.replace(TINY, steps=8, checkpoint_every=3, log_every=2)
    stopped = train_backbone(
        normals,
        config,
        out_dir=tmp_path,
        progress=False,
        callback=lambda step, record: step < 4,
    )
    assert int(stopped.state.step) == 4
    assert not (tmp_path / "backbone.safetensors").exists()
    with pytest.raises(FileExistsError, match="resume"):
        train_backbone(normals, config, out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="other images"):
        train_backbone(normals[::-1], config, out_dir=tmp_path, resume=True, progress=False)
    changed = dataclasses.replace(config, learning_rate=1e-2)
    with pytest.raises(ValueError, match="learning_rate"):
        train_backbone(normals, changed, out_dir=tmp_path, resume=True, progress=False)

    # CutPaste reads no anatomy: resuming with another is the same run (it was refused).
    other_anatomy = dataclasses.replace(config, anatomy="dark")
    resumed = train_backbone(normals, other_anatomy, out_dir=tmp_path, resume=True, progress=False)
    straight = train_backbone(normals, config, progress=False)
    _assert_trees_equal(resumed.state, straight.state)

    def drop_time(history):
        return [{k: v for k, v in h.items() if k != "seconds"} for h in history]

    assert drop_time(resumed.history) == drop_time(straight.history)
    assert (tmp_path / "backbone.safetensors").exists()
    log = (tmp_path / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == [2, 4, 6, 8]


def test_saved_checkpoint_round_trips_and_gives_the_same_next_step(trained, normals, tmp_path):
    from msde_jax.ssl import save_checkpoint

    path = save_checkpoint(tmp_path / "c.safetensors", trained.state, TINY)
    state, config = load_checkpoint(path)
    assert config == TINY
    _assert_trees_equal(state, trained.state)
    step = make_train_step(TINY)
    batch = prepare_images(normals[:8], 16, progress=False)
    a, metrics_a = step(step.replicate(trained.state), batch)
    b, metrics_b = step(step.replicate(state), batch)
    _assert_trees_equal((a, metrics_a), (b, metrics_b))
    with pytest.raises(ValueError, match="not a training checkpoint"):
        load_checkpoint(save_backbone(tmp_path / "b.safetensors", trained.state, TINY))
    with pytest.raises(ValueError, match="is a training checkpoint, not an adapted backbone"):
        Embedder("resnet18", weights=path, image_size=16, progress=False)
    # An AnatPaste run checkpointed before its source images were drawn apart (no "sampling")
    # is not resumed: the two ways of sampling would mix.
    from msde_jax.backbones.weight_files import load_variables, save_variables

    flat, meta = load_variables(path)
    meta.pop("sampling")
    save_variables(tmp_path / "checkpoint.safetensors", flat, meta)
    anatpaste = dataclasses.replace(TINY, task="anatpaste")
    with pytest.raises(ValueError, match="before AnatPaste drew its source images apart"):
        train_backbone(normals, anatpaste, out_dir=tmp_path, resume=True, progress=False)


def test_data_parallel_step_matches_one_device(normals):
    devices = jax.local_devices()
    assert len(devices) == 2  # conftest forces two host devices
    from msde_jax.backbones.variables import load_backbone_variables

    variables, _ = load_backbone_variables("resnet18", "random", image_size=16)
    batch = prepare_images(normals[:8], 16, progress=False)
    # SGD, whose update is proportional to the gradient (Adam's first step is ≈ lr·sign(g),
    # which flips for gradients at rounding level).
    config = dataclasses.replace(TINY, optimizer="sgd", learning_rate=0.1)
    out = []
    for devs in (devices[:1], devices):
        step = make_train_step(config, devices=devs)
        state, metrics = step(step.replicate(init_state(config, variables)), batch)
        out.append((jax.device_get(state), jax.device_get(metrics)))
    (s1, m1), (s2, m2) = out
    np.testing.assert_allclose(m1.loss, m2.loss, rtol=1e-5)

    # Sums over the batch are reduced in another order when sharded: the two updates agree to
    # float32 rounding (measured 1e-5 of the update; 1e-2 before batch norm computed its
    # training variance in two passes).
    def flat(tree):
        return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])

    start, one, two = (flat(init_state(config, variables).params), flat(s1.params), flat(s2.params))
    assert np.linalg.norm(one - two) <= 1e-4 * np.linalg.norm(one - start)
    for x, y in zip(jax.tree.leaves(s1.batch_stats), jax.tree.leaves(s2.batch_stats), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)


def test_batch_indices_cover_each_epoch_once():
    n, bs = 10, 4
    order = np.concatenate([batch_indices(n, bs, seed=3, step=s) for s in range(5)])
    np.testing.assert_array_equal(np.sort(order[:10]), np.arange(10))
    np.testing.assert_array_equal(np.sort(order[10:20]), np.arange(10))
    np.testing.assert_array_equal(batch_indices(n, bs, seed=3, step=2), order[8:12])
    assert not np.array_equal(batch_indices(n, bs, seed=4, step=0), order[:4])


def test_anatpaste_never_takes_its_patch_from_the_image_itself():
    """With fewer images than the batch (or a batch of one) a batch repeats images, so its
    neighbour in the batch may be the image itself: the source is drawn apart."""
    for n, bs in ((2, 8), (3, 1), (5, 4)):
        for step in range(20):
            indices = batch_indices(n, bs, seed=0, step=step)
            others = other_indices(indices, n, seed=0, step=step)
            assert np.all(others != indices)
            assert np.all((others >= 0) & (others < n))
    np.testing.assert_array_equal(  # a function of (seed, step): a resumed run draws the same
        other_indices(np.arange(4), 5, seed=1, step=3),
        other_indices(np.arange(4), 5, seed=1, step=3),
    )
    # ... and of both: not one fixed partner per image
    indices = np.arange(4)
    by_step = {other_indices(indices, 5, seed=1, step=s).tobytes() for s in range(10)}
    by_seed = {other_indices(indices, 5, seed=k, step=3).tobytes() for k in range(10)}
    assert len(by_step) > 1
    assert len(by_seed) > 1


def test_config_errors_name_the_fix():
    with pytest.raises(ValueError, match="task must be one of"):
        TrainConfig(task="rotation")
    with pytest.raises(ValueError, match="multiple of 14"):
        TrainConfig(backbone="dinov2_vits14", image_size=100)
    with pytest.raises(ValueError, match="multiple of the 2 devices"):
        make_train_step(dataclasses.replace(TINY, batch_size=7))
    with pytest.raises(ValueError, match="at least 2 normal images"):
        train_backbone(np.zeros((1, 28, 28), np.uint8), TINY, progress=False)
    for field, value in [
        ("weight_decay", -0.1),
        ("warmup_steps", -1),
        ("learning_rate", 0.0),
        ("learning_rate", np.inf),  # accepted before: its run saved NaN weights
        ("learning_rate", np.nan),
        ("weight_decay", np.inf),
    ]:
        with pytest.raises(ValueError, match=f"^{field} must be"):
            dataclasses.replace(TINY, **{field: value})
    for seed in (-1, 2**32, 2**64):  # jax.random.key keeps a seed's low 32 bits only
        with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*32\)"):
            dataclasses.replace(TINY, seed=seed)
    for field, value in [("seed", 1.5), ("batch_size", 8.0), ("steps", True)]:
        with pytest.raises(ValueError, match=f"^{field} must be an integer, got"):
            dataclasses.replace(TINY, **{field: value})
    # NumPy numbers and a Path are kept as the plain values the checkpoints' JSON holds (a
    # NumPy seed failed at the first checkpoint, after training up to it).
    numpy_values = {"seed": np.int64(3), "batch_size": np.int32(4), "learning_rate": np.float32(1)}
    plain = dataclasses.replace(TINY, **numpy_values, init=Path("w"))
    assert TrainConfig.from_json(plain.to_json()) == plain
    assert (type(plain.seed), type(plain.learning_rate), plain.init) == (int, float, "w")
    # CutPaste makes three views of each image, AnatPaste two: the memory check counts them.
    from msde_jax import _memory

    seen = []
    original = _memory.check_memory

    def spy(step, needs, **kwargs):
        seen.append(needs["views of a batch"])
        return original(step, needs, **kwargs)

    import msde_jax.ssl.config as ssl_config

    ssl_config.check_memory, saved = spy, ssl_config.check_memory
    try:
        for task in ("cutpaste", "anatpaste"):
            check_training_memory(24, dataclasses.replace(TINY, task=task))
    finally:
        ssl_config.check_memory = saved
    assert seen == [3 * 8 * 16 * 16 * 3 * 4, 2 * 8 * 16 * 16 * 3 * 4]


def test_a_diverging_run_is_one_error_line(tmp_path, capsys, monkeypatch):
    from msde_jax.ssl import train as ssl_train

    with pytest.raises(FloatingPointError, match="nan by step 3: lower the learning rate and"):
        ssl_train._finite([ssl_train.StepMetrics(1.0, 0.5), ssl_train.StepMetrics(np.nan, 0)], 3)
    assert ssl_train._finite([ssl_train.StepMetrics(np.float32(1), 0.5)], 1)[0].loss == 1.0

    def diverged(*args, **kwargs):
        raise FloatingPointError("the loss became nan by step 2: lower the learning rate.")

    monkeypatch.setattr(ssl_train, "train_backbone", diverged)
    stack = tmp_path / "normals.npz"
    np.savez(stack, images=np.zeros((4, 32, 32), np.uint8))
    assert main(["train-backbone", str(stack), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2  # the line naming the run, then the error
    assert err[0].startswith("training on 4 normal images")
    assert err[1] == "error: the loss became nan by step 2: lower the learning rate."


def test_weights_that_are_not_finite_are_never_saved(normals, tmp_path, monkeypatch):
    """A loss is computed before its step's update, so the last update of a diverging run
    was saved unchecked: a backbone file the Embedder then refused as NaN."""
    from msde_jax.ssl import train as ssl_train

    real = ssl_train.make_train_step

    class Corrupting:  # the real step, whose update turns the weights to NaN
        def __init__(self, *args, **kwargs):
            self.step = real(*args, **kwargs)
            self.devices, self.replicate = self.step.devices, self.step.replicate

        def __call__(self, state, *args):
            state, metrics = self.step(state, *args)
            return state._replace(params=jax.tree.map(lambda p: p * np.nan, state.params)), metrics

    monkeypatch.setattr(ssl_train, "make_train_step", Corrupting)
    config = dataclasses.replace(TINY, steps=1)  # its loss is finite, its update is not
    with pytest.raises(FloatingPointError, match="weights became NaN or infinite by step 1"):
        train_backbone(normals, config, out_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / BACKBONE).exists()
    assert not (tmp_path / "run" / CHECKPOINT).exists()


def test_resume_without_a_checkpoint_says_training_starts_over(normals, tmp_path, capsys):
    """`--resume` into a folder without a checkpoint (a typo in --out) started a new run
    without a word; without a folder at all it was ignored."""
    with pytest.raises(ValueError, match="resume=True continues the checkpoint in out_dir"):
        train_backbone(normals, TINY, resume=True, progress=False)
    config = dataclasses.replace(TINY, steps=1)
    result = train_backbone(normals, config, out_dir=tmp_path / "new", resume=True, progress=False)
    assert int(result.state.step) == 1
    assert f"note: {tmp_path / 'new'} holds no checkpoint to resume: training starts at step 0" in (
        capsys.readouterr().err
    )


def test_command_line_trains_then_embeds_with_the_adapted_backbone(normals, tmp_path, capsys):
    stack = tmp_path / "normals.npz"
    np.savez(stack, images=normals[:16])
    run = tmp_path / "run"
    args = ["--backbone", "resnet18", "--init", "scratch", "--task", "cutpaste"]
    args += ["--image-size", "16", "--batch-size", "8", "--lr", "1e-3", "--warmup-steps", "0"]
    args += ["--schedule", "constant", "--head-hidden", "64", "--log-every", "1"]
    args += ["--anatomy", "dark"]  # AnatPaste's: a note says CutPaste ignores it
    assert main(["train-backbone", str(stack), "--out", str(run), "--steps", "2", *args]) == 0
    captured = capsys.readouterr()
    assert "note: --anatomy is AnatPaste's; CutPaste pastes anywhere: ignored" in captured.err
    printed = captured.out
    assert "--weights" in printed
    assert "backbone.safetensors" in printed
    assert main(["train-backbone", str(stack), "--out", str(run), "--steps", "2", *args]) == 2
    assert "--resume" in capsys.readouterr().err
    emb = tmp_path / "emb.npz"
    weights = str(run / "backbone.safetensors")
    common = ["--image-size", "16", "--batch-size", "8", "--out", str(emb)]
    assert main(["embed", str(stack), "--backbone", "resnet18", "--weights", weights, *common]) == 0
    with np.load(emb) as z:
        assert z["embeddings"].shape == (16, 512)
        assert json.loads(str(z["config"]))["weights"] == weights
    assert main(["embed", str(stack), "--backbone", "resnet34", "--weights", weights, *common]) == 2
    assert "holds resnet18 weights" in capsys.readouterr().err


def _interrupt_at(stop):
    """A training callback that presses Ctrl-C at log step ``stop``."""

    def interrupt(step, record):
        if step == stop:
            raise KeyboardInterrupt

    return interrupt


def test_interrupted_run_says_where_to_resume_from(normals, tmp_path, capsys):
    config = dataclasses.replace(TINY, steps=6, checkpoint_every=2, log_every=1)

    with pytest.raises(KeyboardInterrupt):
        train_backbone(normals, config, out_dir=tmp_path, progress=False, callback=_interrupt_at(3))
    assert "holds step 2" in capsys.readouterr().err
    state, _ = load_checkpoint(tmp_path / "checkpoint.safetensors")
    assert int(state.step) == 2
    resumed = train_backbone(normals, config, out_dir=tmp_path, resume=True, progress=False)
    assert [h["step"] for h in resumed.history] == [1, 2, 3, 4, 5, 6]
    log = (tmp_path / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == [1, 2, 3, 4, 5, 6]


def test_a_resumed_log_is_the_uninterrupted_one(normals, tmp_path, capsys):
    """A checkpoint between two log records keeps the steps since the last one, so the next
    record averages the same steps; a log line cut short by the kill is dropped."""
    config = dataclasses.replace(TINY, steps=6, checkpoint_every=3, log_every=2)

    with pytest.raises(KeyboardInterrupt):
        train_backbone(normals, config, out_dir=tmp_path, progress=False, callback=_interrupt_at(4))
    assert "holds step 3" in capsys.readouterr().err
    with open(tmp_path / "train_log.jsonl", "a") as f:
        f.write('{"step": 5, "lo')  # killed while writing
    resumed = train_backbone(normals, config, out_dir=tmp_path, resume=True, progress=False)
    straight = train_backbone(normals, config, progress=False)

    def drop_time(history):
        return [{k: v for k, v in h.items() if k != "seconds"} for h in history]

    assert drop_time(resumed.history) == drop_time(straight.history)
    log = (tmp_path / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in log] == resumed.history
    # The seconds go on from the record kept (they started again from 0 after the resume).
    seconds = [h["seconds"] for h in resumed.history]
    assert seconds == sorted(seconds)


def test_a_resumed_progress_line_rates_this_sessions_steps_only(monkeypatch, capsys):
    """Resumed at 900 of 1,000 steps, the line divided 900 + the new steps by the new
    seconds: a rate of hundreds and an ETA of 0."""
    from msde_jax import _progress

    clock = iter([0.0, 10.0, 10.0])  # start; the update; the line it writes
    monkeypatch.setattr(_progress.time, "perf_counter", lambda: next(clock))
    bar = _progress.Progress(1000, "training", unit="steps", done=900)
    bar.update(10)
    assert "training: 910/1000 steps (1.0/s, 90 s left)" in capsys.readouterr().err


def test_an_earlier_run_is_never_overwritten(normals, tmp_path, capsys):
    """Before its first checkpoint an interrupted run leaves nothing to resume, nor a log in
    the way; a folder with an earlier run's backbone or log and no checkpoint is refused."""
    config = dataclasses.replace(TINY, steps=4, checkpoint_every=3, log_every=1)

    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train_backbone(normals, config, out_dir=run, progress=False, callback=_interrupt_at(2))
    assert "before the first checkpoint: nothing to resume" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == []
    finished = train_backbone(normals, config, out_dir=run, progress=False)  # starts over
    assert [h["step"] for h in finished.history] == [1, 2, 3, 4]
    (run / "checkpoint.safetensors").unlink()  # the large file a user deletes
    for resume in (False, True):
        with pytest.raises(FileExistsError, match="holds backbone.safetensors and train_log"):
            train_backbone(normals, config, out_dir=run, resume=resume, progress=False)


def test_a_warm_up_as_long_as_the_run_takes_half_of_it():
    """The default 50 warm-up steps in a 20-step run ended at the peak learning rate."""
    from msde_jax.ssl.train import learning_rate_schedule

    peak = 1e-3
    lr = learning_rate_schedule(TrainConfig(steps=20, warmup_steps=50, learning_rate=peak))
    assert float(lr(0)) == 0.0
    assert float(lr(10)) == pytest.approx(peak)  # half the steps: the peak
    assert float(lr(19)) < 0.05 * peak  # then the cosine decays toward 0 at step 20
    kept = learning_rate_schedule(TrainConfig(steps=20, warmup_steps=5, learning_rate=peak))
    assert float(kept(5)) == pytest.approx(peak)  # a shorter warm-up is kept as given
    flat = TrainConfig(steps=20, warmup_steps=20, learning_rate=peak, schedule="constant")
    assert float(learning_rate_schedule(flat)(5)) == pytest.approx(peak / 2)
