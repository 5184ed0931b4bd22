"""No needless recompilation: same-shaped data reuses compiled code; ragged batches are padded."""

import logging

import jax
import numpy as np
import pytest

from msde_jax import MSDEDetector
from msde_jax._platform import PATHS_ENV, cpu_paths
from msde_jax.core.blocks import bucket_rows
from msde_jax.detectors.msde import PAPER_PARAMS


class _Compiles(logging.Handler):
    def __init__(self):
        super().__init__()
        self.names = []

    @property
    def count(self):
        return len(self.names)

    def emit(self, record):
        message = record.getMessage()
        if message.startswith("Compiling"):
            self.names.append(message.split(" with ")[0].removeprefix("Compiling "))


@pytest.fixture
def compiles():
    handler = _Compiles()
    logger = logging.getLogger("jax")
    logger.addHandler(handler)
    try:
        with jax.log_compiles():
            yield handler
    finally:
        logger.removeHandler(handler)


def _normals(seed, n=120, d=6):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def test_bucket_rows():
    assert [bucket_rows(m) for m in (1, 8, 9, 1000, 4096, 4097)] == [8, 8, 16, 1024, 4096, 8192]
    assert [bucket_rows(m, least=1) for m in (1, 2, 3, 9, 4097)] == [1, 2, 4, 16, 8192]


def test_refitting_and_rescoring_same_shapes_compile_nothing(compiles):
    det = MSDEDetector(k=10)
    det.fit(_normals(0))
    det.score_samples(_normals(1, 30))
    before = compiles.count
    assert before > 0  # the first fit and score compiled
    det.fit(_normals(2))  # new data, same shape
    det.score_samples(_normals(3, 30))
    assert compiles.count == before


def test_ragged_batches_share_a_padded_program(compiles):
    det = MSDEDetector(k=10, threshold="chi2").fit(_normals(4))
    queries = _normals(5, 40)
    full = det.score_samples(queries[:32])
    before = compiles.count
    for m in (17, 20, 25, 31):  # all padded to 32 rows
        np.testing.assert_array_equal(det.score_samples(queries[:m]), full[:m])
    assert compiles.count == before


def test_bucket_fit_rows():
    from msde_jax.core.blocks import bucket_fit_rows

    sizes = [bucket_fit_rows(m) for m in (1, 15, 16, 17, 96, 305, 381, 476, 1000)]
    assert sizes == [1, 15, 16, 18, 96, 320, 384, 480, 1024]
    for m in range(1, 3000):
        assert m <= bucket_fit_rows(m) <= m * 9 / 8


def test_chunked_rows_equals_one_call_and_reuses_the_chunk_program(compiles):
    from msde_jax.core.blocks import chunked_rows

    fn = jax.jit(lambda x: (jax.numpy.sum(x * x, axis=1), x[:, :2]))
    x = _normals(10, n=70, d=5)
    want = jax.device_get(fn(x))
    for m in (70, 33, 17, 16, 3, 1):
        got = chunked_rows(fn, x[:m], 16)
        np.testing.assert_allclose(got[0], want[0][:m], rtol=1e-6)
        np.testing.assert_array_equal(got[1], want[1][:m])
    on_device = chunked_rows(fn, jax.device_put(x[:40]), 16)  # padded and split on the device
    np.testing.assert_array_equal(on_device[1], want[1][:40])
    before = compiles.count
    for m in (65, 40, 20, 9):  # chunks of 16 rows, and buckets 8 and 16 below: all compiled
        chunked_rows(fn, x[:m], 16)
    assert compiles.count == before
    with pytest.raises(ValueError, match="chunk"):
        chunked_rows(fn, x, 0)


def test_one_image_is_scored_alone_and_other_small_calls_in_eights(monkeypatch):
    """Fewer items than a chunk run the program of the next power of two of at least 8
    items, except one image of patches (here 9), which runs alone: a scan scored on its own
    does 1/8 of the work of eight; one pooled vector still pads to 8. The scores do not
    depend on it."""
    from msde_jax import PatchBankDetector
    from msde_jax.detectors import fitting

    items = []

    def recording(score):
        jitted = jax.jit(score)

        def call(state, x):
            items.append(x.shape[0])
            return jitted(state, x)

        return call

    monkeypatch.setattr(fitting, "_jitted", recording)
    patches = np.random.default_rng(12).normal(size=(40, 3, 3, 5)).astype(np.float32)
    bank = PatchBankDetector(size=30, threshold="none").fit(patches[:32])
    pooled = MSDEDetector(mode="none", threshold="none").fit(_normals(15, n=40))
    items.clear()
    alone = [bank.score_samples(patches[32 + i : 33 + i])[0] for i in range(3)]
    together = bank.score_samples(patches[32:35])
    assert items == [1, 1, 1, 8]
    np.testing.assert_allclose(alone, together, rtol=1e-6)
    items.clear()
    pooled.score_samples(_normals(16, n=1))
    pooled.score_samples(_normals(16, n=9))
    assert items == [8, 16]


def test_bank_refits_of_nearby_sizes_and_any_batch_share_programs(compiles):
    """Fits on 26..32 images (one bucket: the cross-fit folds too) and scoring any number of
    images compile nothing after the first fit and score; the fit's coreset ignores padding."""
    from msde_jax import PatchBankDetector
    from msde_jax.detectors import score_bank_detector
    from msde_jax.detectors.fitting import chunked_scores

    rng = np.random.default_rng(11)
    patches = rng.normal(size=(70, 3, 3, 5)).astype(np.float32)
    det = PatchBankDetector(size=40, n_folds=4)
    det.fit(patches[:64])
    det.score_samples(patches[:20])
    before = compiles.count
    for n in (63, 62):  # bucket 64; the folds' fits (46-48 images) bucket 48, as for 64
        det.fit(patches[:n])
        indices = np.asarray(det.state_.bank.indices)
        assert indices.min() >= 0
        assert indices.max() < n * 9  # never a padding row
        for m in (20, 11, 30):  # buckets of 32 and 16 images (the folds were 16)
            det.score_samples(patches[:m])
    # A detector differing only in what no score reads (threshold, folds) shares the program.
    other = det.state_.config.__class__(size=40, n_folds=2, contamination=0.2)
    same = chunked_scores(score_bank_detector, det.state_._replace(config=other), patches[:20])
    np.testing.assert_array_equal(same, det.score_samples(patches[:20]))
    assert compiles.count == before


def test_a_loaded_detector_scores_with_the_programs_already_compiled(compiles, tmp_path):
    det = MSDEDetector(k=10).fit(_normals(13, n=115))
    want = det.score_samples(_normals(14, 30))
    assert det.state_.train.shape[0] == 120  # 115 rows and their padding (fit_rows) ...
    assert det.to_arrays()[1]["state.train"].shape[0] == 115  # ... saved without it
    det.save(tmp_path / "model")
    before = compiles.count
    loaded = MSDEDetector.load(tmp_path / "model")
    np.testing.assert_array_equal(loaded.score_samples(_normals(14, 30)), want)
    assert compiles.count == before, compiles.names[before:]


def test_an_msde_fit_is_one_program_per_training_size(compiles):
    """Density weights, shift, PCA and Gaussian of one padded training size are one compiled
    program (no eager pieces between them): a fit on n rows cross-fits on n − ⌈n/5⌉ and
    n − ⌊n/5⌋ rows padded to the whole fit's bucket (up to 1,024 rows on a CPU), so one size.
    A second fit with other fit-only parameters compiles nothing; one with another step size,
    tolerance, ridge or score compiles no new fit program (numbers are traced, the score is
    not part of the fit)."""
    x = _normals(12, n=103, d=11)  # fits on 103, 83 and 82 rows, all padded to 104; d unique
    MSDEDetector(k=10).fit(x)
    fits = [name for name in compiles.names if "_fit_arrays" in name]
    assert len(fits) == 1, compiles.names
    # Nothing else: host arrays reach the device by copies, not per-shape staging programs.
    assert set(compiles.names) == {"jit(_fit_arrays)", "jit(score_detector)"}, compiles.names
    before = compiles.count
    MSDEDetector(k=10, contamination=0.1).fit(x)
    assert compiles.count == before, compiles.names[before:]
    other = MSDEDetector(k=10, step_size=0.5, tol=0.02, ridge=1e-3, score="displacement")
    other.fit(x)
    assert not [name for name in compiles.names[before:] if "_fit_arrays" in name]


def test_parameters_a_program_does_not_read_do_not_recompile_it(compiles):
    """The fit program is keyed by :meth:`DetectorConfig.fit_program` and the score program by
    :meth:`~msde_jax.detectors.config.BaseConfig.scoring`: the transductive fit is the
    inductive one, a fit without a shift ignores the shift's and the weights' parameters, and
    an inductive score ignores the covariance estimator and the weights' parameters (the
    state's arrays carry them), as a kNN score ignores the shift's and the Gaussian's."""
    x, queries = _normals(20, n=70, d=9), _normals(21, 16, d=9)  # d unique to this test
    fitted = [
        MSDEDetector(k=10, threshold="none").fit(x),
        MSDEDetector(k=10, threshold="none", mode="none").fit(x),
        MSDEDetector(k=10, threshold="none", mode="inductive", score="knn").fit(x),
    ]
    for det in fitted:
        det.score_samples(queries)
    for det, other, new_fit in zip(
        fitted,
        [
            dict(covariance="ledoit_wolf", block_order="given", ridge=0.1, index_sum_quirk=True),
            dict(k=7, max_iter=3, density="uniform", n_neighbors=5, neighbors="exact"),
            dict(covariance="oas", ridge=0.1, standardize=False, n_neighbors=5),
        ],
        # the fit computes the Gaussian and the weights; without a shift it reads neither k
        # nor the weights' parameters
        [True, False, True],
        strict=True,
    ):
        before = compiles.count
        again = MSDEDetector(**{**det.get_params(), **other}).fit(x)
        again.score_samples(queries)
        names = compiles.names[before:]
        assert "jit(score_detector)" not in names, (other, names)
        assert names.count("jit(_fit_arrays)") == new_fit, (other, names)
    before = compiles.count
    paper = MSDEDetector(k=10, mode="transductive", threshold="none").fit(x)
    assert "jit(_fit_arrays)" not in compiles.names[before:]
    assert paper.n_iter_ == fitted[0].n_iter_


@pytest.mark.parametrize("mode", ["inductive", "transductive"])
def test_a_sweep_over_step_size_and_tolerance_shares_the_score_program(compiles, mode):
    """``DetectorState.for_scoring`` passes the shift's step size and tolerance to the score
    program as data: fits with other values compile no new fit or score program, and their
    scores equal those of the state as fitted (the numbers constants in its program), but
    for rounding: XLA may fold a constant otherwise than a traced value, and a point at the
    boundary of the per-point stopping rule (‖m − y‖ < tol) then runs one iteration more or
    less (since the shift runs on centred points, one of these 16 scores moves by 1.5e-4 in
    one test order and 4.8e-7 in another; bit-identical before)."""
    from msde_jax.detectors import score_detector

    x, queries = _normals(24, n=70, d=13), _normals(25, 16, d=13)  # d unique to this test
    MSDEDetector(k=10, mode=mode, threshold="none").fit(x).score_samples(queries)
    before = compiles.count
    fitted = [
        MSDEDetector(k=10, mode=mode, step_size=step_size, tol=tol, threshold="none").fit(x)
        for step_size, tol in ((0.5, 0.02), (0.9, 0.0))
    ]
    scores = [det.score_samples(queries) for det in fitted]
    assert compiles.count == before, compiles.names[before:]
    assert fitted[0].state_.shift_numbers is None  # the fitted state keeps the config's
    for det, got in zip(fitted, scores, strict=True):
        np.testing.assert_allclose(got, score_detector(det.state_, queries), atol=1e-3)
    assert not np.allclose(scores[0], scores[1], atol=1e-2)  # the numbers reached the program


def test_a_score_is_the_same_under_the_config_that_keys_its_program():
    """Every parameter :meth:`unread_by_score` names at a value other than its default, and
    the scores under the config and under ``config.scoring()`` (its defaults) are equal: none
    of them is read when scoring."""
    from msde_jax import PatchBankDetector
    from msde_jax.detectors import score_bank_detector, score_detector

    x, queries = _normals(22, n=60, d=5), _normals(23, 12, d=5)
    unusual = dict(
        covariance="ledoit_wolf", n_components=3, ridge=0.5, standardize=False,
        density="uniform", n_neighbors=5, block_order="given", index_sum_quirk=True,
        neighbors="exact", contamination=0.2, n_folds=3, score_neighbors=3,
    )  # fmt: skip
    shift = dict(k=6, step_size=0.9, max_iter=2, tol=0.5)
    for params in (
        dict(unusual, k=10, mode="inductive", score="mahalanobis"),
        dict(unusual, k=10, mode="inductive", score="displacement"),
        dict(unusual, **shift, mode="none", score="mahalanobis", batch_size=16),
        dict(unusual, **shift, mode="none", score="knn", score_neighbors=2),
    ):
        state = MSDEDetector(**params).fit(x).state_
        config = state.config
        default = config.scoring()
        same = {n for n in config.unread_by_score() if getattr(config, n) == getattr(default, n)}
        assert same <= {"threshold", "dtype"}, (params, same)  # every other one changed
        np.testing.assert_array_equal(
            score_detector(state._replace(config=config.scoring()), queries),
            score_detector(state, queries),
        )
    patches = np.random.default_rng(24).normal(size=(12, 4, 4, 5)).astype(np.float32)
    bank = PatchBankDetector(
        size=30, shift=True, k=5, step_size=0.9, projection_dim=3, seed=4, position=2.0,
        foreground="pca", density="uniform", contamination=0.2, n_folds=3,
    ).fit(patches).state_  # fmt: skip
    config = bank.config
    unread = ("size", "shift", "k", "projection_dim", "seed", "position", "foreground", "density")
    assert all(getattr(config, n) != getattr(config.scoring(), n) for n in unread)
    np.testing.assert_array_equal(
        score_bank_detector(bank._replace(config=config.scoring()), patches[:5]),
        score_bank_detector(bank, patches[:5]),
    )


@pytest.mark.parametrize(
    "params",
    [
        dict(k=10),
        dict(k=10, mode="none", score="knn", score_neighbors=3),
        {**PAPER_PARAMS, "k": 10},
    ],
    ids=["inductive", "knn", "paper-k10"],
)
def test_an_msde_refit_on_a_size_in_the_same_bucket_compiles_nothing(compiles, params):
    """A fit pads its rows to a bucket (``fit_rows``): refits on 104 and 102 images reuse every
    fit and score program of a fit on 103 (all three pad to 104 rows, and so do their folds'
    fits on 81 to 84 rows), the paper preset's transductive batches too (padded with the
    training rows to one bucketed joint size: held-out folds of 20 or 21 rows and 9 test rows)."""
    for n in (103, 104, 102):
        if n == 104:
            before = compiles.count
        det = MSDEDetector(**params).fit(_normals(14 + n, n=n, d=7))  # shapes no other test has
        det.score_samples(_normals(15, 9, d=7))
    assert compiles.count == before, compiles.names[before:]


def test_padded_and_unpadded_msde_fits_agree(monkeypatch):
    """Padding rows change nothing but rounding: weights, shifted rows and iteration counts
    equal those of a fit on the rows alone, and scores and out-of-fold scores agree to float32
    rounding: with a shift that stops early (clustered rows), and in the transductive mode with
    content-ordered blocks, whose held-out folds are scored as padded joint batches."""
    from msde_jax.detectors import msde

    rng = np.random.default_rng(16)
    centres = rng.normal(size=(3, 6)) * 4
    clustered = centres[rng.integers(0, 3, 90)] + 0.05 * rng.normal(size=(90, 6))
    cases = [
        (clustered.astype(np.float32), dict(k=10, tol=0.05, threshold="chi2")),
        (_normals(18, n=90), dict(k=10, mode="transductive", normalize="l2")),
    ]
    iterations = []
    for x, params in cases:
        queries = _normals(19, 25) * 1.5
        padded = MSDEDetector(**params).fit(x)
        iterations.append(padded.n_iter_)
        assert padded.state_.train.shape[0] == msde.fit_rows(padded.config(), 90) == 96
        unpadded = msde.unpadded(padded.state_)
        assert unpadded.train.shape[0] == 90
        assert unpadded.valid is None
        with monkeypatch.context() as patch:  # the same fit, with padding switched off
            patch.setattr(msde, "_pads", lambda config, n: False)
            plain = MSDEDetector(**params).fit(x)
            assert plain.state_.valid is None
            want = plain.score_samples(queries)
        np.testing.assert_array_equal(unpadded.density, plain.state_.density)
        np.testing.assert_allclose(unpadded.reference, plain.state_.reference, atol=1e-6)
        assert padded.n_iter_ == plain.n_iter_
        np.testing.assert_allclose(padded.score_samples(queries), want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            padded.decision_scores_, plain.decision_scores_, rtol=1e-5, atol=1e-6
        )
    assert iterations[0] < 8  # the stop was exercised


# ---------------------------------------------------------------------- no host syncs in loops
def _unknown_trip_count_loops(compiled_text: str) -> list[str]:
    """The compiled program's ``while`` loops whose trip count XLA does not know: on a GPU
    each iteration of such a loop copies its condition to the host."""
    return [
        line.strip()[:160]
        for line in compiled_text.splitlines()
        if " while(" in line and "known_trip_count" not in line
    ]


def test_fit_and_score_programs_have_no_data_dependent_loops():
    from msde_jax.core import (
        approximate_knn,
        bank_fit_subsets,
        density_weights,
        kcenter_greedy,
        mean_shift,
    )
    from msde_jax.core.fuzzy import fuzzy_simplicial_set
    from msde_jax.core.neighbors import knn
    from msde_jax.detectors import fit_bank_detector, score_bank_detector, score_detector

    x = _normals(6, n=300, d=8)
    w = np.ones(300, np.float32)
    programs = {
        "density msde (blocks)": density_weights.lower(x, method="msde"),
        "density fuzzy_degree": density_weights.lower(x, method="fuzzy_degree"),
        "fuzzy graph": fuzzy_simplicial_set.lower(knn(x, k=15)),
        "blurring shift": mean_shift.lower(x, w, k=10, neighbors="exact", batch_size=64),
        "blurring shift, one block": mean_shift.lower(x, w, k=10, neighbors="exact"),
        "approximate shift": mean_shift.lower(x, w, k=10, neighbors="approximate", leaf_size=32),
        "inductive shift": mean_shift.lower(x[:40], reference=x, k=10, batch_size=16),
        "approximate knn": approximate_knn.lower(x, k=10, leaf_size=32),
        "coreset": kcenter_greedy.lower(x, 20),
        "shifted banks of three subsets": bank_fit_subsets.lower(
            x, np.arange(300) % np.array([[1], [2], [3]]) != 1, size=20, shift=True, k=5
        ),
    }
    det = MSDEDetector(k=10).fit(x)
    programs["score_detector (inductive)"] = jax.jit(score_detector).lower(det.state_, x[:32])
    patches = np.random.default_rng(7).normal(size=(20, 4, 4, 6)).astype(np.float32)
    from msde_jax.detectors import BankConfig

    bank = fit_bank_detector(patches, BankConfig(size=30)).state
    programs["score_bank_detector"] = jax.jit(score_bank_detector).lower(bank, patches[:8])
    found = {
        name: loops
        for name, lowered in programs.items()
        if (loops := _unknown_trip_count_loops(lowered.compile().as_text()))
    }
    assert not found, found


# ---------------------------------------------------------------------- data stays on device
@pytest.mark.parametrize("kind", ["msde", "bank"])
def test_device_arrays_are_checked_and_scored_on_the_device(kind):
    from msde_jax import PatchBankDetector

    rng = np.random.default_rng(8)
    if kind == "msde":
        det = MSDEDetector(k=10, threshold="chi2").fit(_normals(9))
        queries = rng.normal(size=(13, 6)).astype(np.float32)
    else:
        det = PatchBankDetector(size=40).fit(rng.normal(size=(20, 3, 3, 5)).astype(np.float32))
        queries = rng.normal(size=(7, 3, 3, 5)).astype(np.float32)
    on_device = jax.device_put(queries)
    # The checked features stay a device array (the checks ran on the device), which the
    # scorer pads there; only the summary of the check and the scores come to the host.
    _, checked = det._checked(on_device)
    assert isinstance(checked, jax.Array)
    assert checked.devices() == on_device.devices()
    _, host = det._checked(queries)
    assert isinstance(host, np.ndarray)
    scores = det.score_samples(on_device)
    np.testing.assert_array_equal(scores, det.score_samples(queries))
    bad = on_device.at[2].set(np.nan)
    with pytest.raises(ValueError, match=r"NaN or infinite values in 1 .*\(first: \[2\]\)"):
        det.score_samples(bad)


def test_folds_padded_to_the_whole_fits_rows_score_as_in_their_own_bucket(monkeypatch):
    """The cross-fit folds padded to the whole fit's rows (``_fold_rows``: on an accelerator,
    and on a CPU up to 1,024 rows) give the out-of-fold scores and threshold of folds padded to
    their own bucket, to float32 rounding; on a CPU past 1,024 rows the folds keep their own."""
    from msde_jax.detectors import msde

    x = _normals(20, n=150, d=7)  # 160 rows; folds of 120 rows: 160, or 120 in their own
    config = MSDEDetector(k=10).config()
    assert msde._fold_rows(config, 150) == 160
    assert msde._fold_rows(config, 1500) == (0 if cpu_paths() else 1536)  # 1,536 rows
    shared = MSDEDetector(k=10).fit(x)
    with monkeypatch.context() as patch:
        patch.setattr(msde, "_fold_rows", lambda config, n: 0)
        own = MSDEDetector(k=10).fit(x)
    np.testing.assert_allclose(shared.decision_scores_, own.decision_scores_, rtol=1e-4)
    np.testing.assert_allclose(shared.threshold_, own.threshold_, rtol=1e-4)
    np.testing.assert_array_equal(shared.state_.reference, own.state_.reference)
    monkeypatch.setenv(PATHS_ENV, "accelerator")  # the accelerator rule, on any machine
    assert msde._fold_rows(config, 1500) == 1536
    # A whole fit that does not pad (4,200 rows: the approximate search) pads no fold either,
    # though the folds' 3,360 rows would take the exact search.
    assert msde._fold_rows(config, 4200) == 0
