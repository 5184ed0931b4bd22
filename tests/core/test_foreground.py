"""The label-free foreground rule (core.foreground) and the masked image reduction
(core.image_scores with a mask): NumPy references, the sign of the first component, a body
that fills the frame, batch independence and jit."""

import jax
import numpy as np
import pytest

from msde_jax.core import foreground_fit, foreground_mask, image_scores
from msde_jax.core.foreground import MAX_MIXED, border_and_centre

G, C = 8, 6


def head_grid(rng, n=20, g=G, c=C):
    """Images of a 'head' on black: a disc of structured patches (two tissues and noise),
    background patches near zero; returns (n, g, g, c) features and the disc mask."""
    i, j = np.mgrid[:g, :g]
    centre = (g - 1) / 2
    disc = (i - centre) ** 2 + (j - centre) ** 2 <= (0.38 * g) ** 2
    tissues = rng.normal(size=(2, c)) + 4.0
    which = rng.integers(0, 2, (n, g, g))
    body = tissues[which] + rng.normal(scale=0.5, size=(n, g, g, c))
    air = rng.normal(scale=0.05, size=(n, g, g, c))
    return np.where(disc[None, :, :, None], body, air).astype(np.float32), disc


def chest_grid(rng, n=20, g=G, c=C):
    """A body filling the frame: every patch one of two tissues at random (no background)."""
    tissues = rng.normal(size=(2, c)) * 3.0
    x = tissues[rng.integers(0, 2, (n, g, g))] + rng.normal(scale=0.3, size=(n, g, g, c))
    return x.astype(np.float32)


def numpy_fit(x):
    """The rule of core.foreground in NumPy (float64)."""
    x = np.asarray(x, np.float64)
    n, h, w, c = x.shape
    flat = x.reshape(-1, c)
    mu = flat.mean(0)
    cov = (flat - mu).T @ (flat - mu) / len(flat)
    v = np.linalg.eigh(cov)[1][:, -1]
    t = (x - mu) @ v
    i, j = np.mgrid[:h, :w]
    edge = np.minimum(np.minimum(i, h - 1 - i), np.minimum(j, w - 1 - j))
    border, centre = edge == 0, edge >= max(min(h, w) // 4, 1)
    mb, mc = np.median(t[:, border]), np.median(t[:, centre])
    sign = 1.0 if mc >= mb else -1.0
    v, t, tau = sign * v, sign * t, sign * (mb + mc) / 2
    b = t.min()
    below = (t < tau) & (t >= b)
    active = below[:, centre].mean() <= MAX_MIXED and (~below[:, border]).mean() <= 0.5
    return v, mu, tau, b, active


def test_border_and_centre():
    border, centre = border_and_centre(8, 8)
    assert int(border.sum()) == 28
    assert bool(border[0, 3])
    assert not bool(border[1, 1])
    np.testing.assert_array_equal(np.argwhere(np.asarray(centre)).min(0), [2, 2])
    np.testing.assert_array_equal(np.argwhere(np.asarray(centre)).max(0), [5, 5])
    assert not bool(np.any(np.asarray(border) & np.asarray(centre)))
    assert int(border_and_centre(3, 3)[1].sum()) == 1  # the middle patch


@pytest.mark.parametrize("negate", [False, True])
def test_the_background_is_found_whatever_the_sign(rng, negate):
    x, disc = head_grid(rng)
    if negate:  # the first component's sign flips; the mask must not
        x = -x
    fg = foreground_fit(x)
    assert bool(fg.active)
    mask = np.asarray(foreground_mask(fg, x))
    np.testing.assert_array_equal(mask, np.broadcast_to(disc, mask.shape))
    # A new image of the same kind too.
    new, _ = head_grid(np.random.default_rng(7), n=3)
    new_mask = np.asarray(foreground_mask(fg, -new if negate else new))
    np.testing.assert_array_equal(new_mask, np.broadcast_to(disc, new_mask.shape))


def test_bright_background_dark_body(rng):
    """Background at a constant non-zero feature, body around zero: still the border."""
    x, disc = head_grid(rng)
    x = np.where(disc[None, :, :, None], x - 4.0, 3.0 + x).astype(np.float32)
    fg = foreground_fit(x)
    assert bool(fg.active)
    np.testing.assert_array_equal(np.asarray(foreground_mask(fg, x))[0], disc)


def test_a_body_filling_the_frame_keeps_every_patch(rng):
    x = chest_grid(rng)
    fg = foreground_fit(x)
    assert not bool(fg.active)
    assert bool(np.all(np.asarray(foreground_mask(fg, x))))


def test_a_grid_without_a_centre_keeps_every_patch(rng):
    x, _ = head_grid(rng, g=2)
    fg = foreground_fit(x)
    assert not bool(fg.active)
    assert np.isfinite(float(fg.threshold))
    assert bool(np.all(np.asarray(foreground_mask(fg, x))))


@pytest.mark.parametrize("kind", ["head", "chest"])
def test_fit_equals_numpy(rng, kind, x64):
    x = head_grid(rng)[0] if kind == "head" else chest_grid(rng)
    x = x.astype(np.float64)
    v, mu, tau, b, active = numpy_fit(x)
    fg = foreground_fit(x)
    np.testing.assert_allclose(np.asarray(fg.direction), v, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(np.asarray(fg.center), mu, rtol=1e-10)
    np.testing.assert_allclose(float(fg.threshold), tau, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(float(fg.floor), b, rtol=1e-8, atol=1e-10)
    assert bool(fg.active) == active


def test_mask_is_batch_independent_and_jits(rng):
    x, _ = head_grid(rng)
    x = x + rng.normal(scale=0.3, size=x.shape).astype(np.float32)  # patches near τ too
    fg = foreground_fit(x)
    batch = np.asarray(foreground_mask(fg, x))
    alone = np.concatenate([np.asarray(foreground_mask(fg, x[i : i + 1])) for i in range(len(x))])
    np.testing.assert_array_equal(alone, batch)
    np.testing.assert_array_equal(np.asarray(jax.jit(foreground_mask)(fg, x)), batch)
    flat = x.reshape(len(x), -1, C)
    np.testing.assert_array_equal(np.asarray(foreground_mask(fg, flat)), batch.reshape(len(x), -1))


# ---------------------------------------------------------------- the masked reduction
def numpy_reduce(s, mask, reduce, q):
    out = []
    for row, keep in zip(s, mask, strict=True):
        v = row[keep] if keep.any() else row
        if reduce == "max":
            out.append(v.max())
        elif reduce == "mean":
            out.append(v.mean())
        else:
            n_top = min(max(int(np.ceil(q * v.size - 1e-9)), 1), v.size)
            out.append(np.sort(v)[::-1][:n_top].mean())
    return np.array(out)


@pytest.mark.parametrize("reduce", ["max", "mean", "top"])
@pytest.mark.parametrize("q", [0.01, 0.1, 0.3, 1.0])
def test_masked_reduction_equals_numpy(rng, reduce, q):
    s = rng.gamma(2.0, size=(7, 49)).astype(np.float32)
    mask = rng.random((7, 49)) < 0.4
    mask[0] = False  # no foreground: all patches
    mask[1] = True
    mask[2] = False
    mask[2, 5] = True  # one patch
    got = np.asarray(image_scores(s, reduce=reduce, q=q, mask=mask))
    np.testing.assert_allclose(got, numpy_reduce(s, mask, reduce, q), rtol=1e-6)
    # All-true and all-false masks give the unmasked score.
    plain = np.asarray(image_scores(s, reduce=reduce, q=q))
    np.testing.assert_allclose(got[:2], plain[:2], rtol=1e-6)


def test_masked_top_is_the_top_q_of_the_foreground(rng):
    s = np.arange(20, dtype=np.float32)[None]
    mask = (np.arange(20) % 2 == 0)[None]  # 10 foreground patches: 0, 2, ..., 18
    # q = 0.2 of 10 foreground patches: the two highest of them, 18 and 16.
    assert float(image_scores(s, reduce="top", q=0.2, mask=mask)[0]) == 17.0
    # Masked patches never count, however high.
    s2 = np.where(mask, s, 1e6).astype(np.float32)
    assert float(image_scores(s2, reduce="top", q=0.2, mask=mask)[0]) == 17.0


def test_masked_reduction_is_batch_independent_and_jits(rng):
    s = rng.gamma(2.0, size=(6, 16)).astype(np.float32)
    mask = rng.random((6, 16)) < 0.5
    f = jax.jit(image_scores, static_argnames="reduce")
    batch = np.asarray(f(s, reduce="top", q=0.25, mask=mask))
    alone = [
        float(f(s[i : i + 1], reduce="top", q=0.25, mask=mask[i : i + 1])[0]) for i in range(6)
    ]
    np.testing.assert_array_equal(alone, batch)
    np.testing.assert_array_equal(
        np.asarray(image_scores(s, reduce="top", q=0.25, mask=mask)), batch
    )


def test_padding_images_changes_nothing(rng):
    x, _ = head_grid(rng, n=13)
    padded = np.concatenate([x, np.full((3, *x.shape[1:]), 50.0, np.float32)])
    fg, fg_padded = foreground_fit(x), foreground_fit(padded, 13)
    for a, b in zip(fg, fg_padded, strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(
        np.asarray(foreground_mask(fg_padded, x)), np.asarray(foreground_mask(fg, x))
    )
