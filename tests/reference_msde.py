"""Plain, loop-based NumPy (float64) transcription of MSDE, used as the test oracle.

Written independently of ``msde_jax`` from ``DESIGN.md`` ("MSDE, precisely") plus the
implementers' fixed decisions. Clarity over speed: intended for n <= a few hundred.
Only numpy is used here (no scipy, scikit-learn or umap-learn).
"""

import math

import numpy as np

SMOOTH_K_TOLERANCE = 1e-5
MIN_K_DIST_SCALE = 1e-3
WEIGHT_FLOOR = 1e-6  # denominator floor in the weighted mean
MOVE_THRESHOLD = 1e-6  # no move where delta <= this
BISECTION_TOL = 1e-4
BISECTION_MAX_STEPS = 50
RADIUS_OFFSET = 1e-6  # Delta = (eps - 1e-6) / n_radii


def _as_f64(a):
    return np.asarray(a, dtype=np.float64)


def _euclidean_to_all(point, rows):
    """Distances from one point to every row: sqrt(sum((p - r)**2))."""
    return np.sqrt(np.sum((point[None, :] - rows) ** 2, axis=1))


# --------------------------------------------------------------------------------------------
# 1. exact kNN
# --------------------------------------------------------------------------------------------
def knn_ref(queries, reference, k, self_first=False):
    """Exact Euclidean kNN by brute force.

    Returns (distances (m, k) float64, indices (m, k) int64), each row ascending, ties broken
    by reference index (stable argsort).

    ``self_first=True`` (queries and reference are the same set, m == n): row i's first
    neighbour is i itself at distance 0, followed by the k-1 nearest *other* rows (so a
    duplicate of i never displaces i from the first slot).
    """
    queries = _as_f64(queries)
    reference = _as_f64(reference)
    m = queries.shape[0]
    n = reference.shape[0]
    if not 0 <= k <= n:
        raise ValueError(f"k={k} must be in [0, {n}]")
    if self_first and m != n:
        raise ValueError("self_first needs queries and reference to be the same set")
    out_d = np.zeros((m, k), dtype=np.float64)
    out_i = np.zeros((m, k), dtype=np.int64)
    for i in range(m):
        d = _euclidean_to_all(queries[i], reference)
        order = np.argsort(d, kind="stable")
        if self_first:
            if k == 0:
                continue
            others = [int(j) for j in order if j != i][: k - 1]
            chosen = [i] + others
            out_i[i] = chosen
            out_d[i, 0] = 0.0
            out_d[i, 1:] = d[others]
        else:
            chosen = order[:k]
            out_i[i] = chosen
            out_d[i] = d[chosen]
    return out_d, out_i


# --------------------------------------------------------------------------------------------
# 2. UMAP smooth kNN distance (transcription of umap.umap_.smooth_knn_dist's logic)
# --------------------------------------------------------------------------------------------
def smooth_knn_dist_ref(distances, k_target, n_iter=64, local_connectivity=1.0, bandwidth=1.0):
    """Return (sigmas, rhos), each (n,), float64.

    ``distances`` rows are ascending with the point itself first (distance 0).
    """
    distances = _as_f64(distances)
    n_rows, n_cols = distances.shape
    target = math.log2(k_target) * bandwidth
    rhos = np.zeros(n_rows, dtype=np.float64)
    sigmas = np.zeros(n_rows, dtype=np.float64)
    mean_distances = float(np.mean(distances)) if distances.size else 0.0

    for i in range(n_rows):
        lo = 0.0
        hi = math.inf
        mid = 1.0

        row = distances[i]
        non_zero = row[row > 0.0]
        if non_zero.shape[0] >= local_connectivity:
            index = int(math.floor(local_connectivity))
            interpolation = local_connectivity - index
            if index > 0:
                rhos[i] = non_zero[index - 1]
                if interpolation > SMOOTH_K_TOLERANCE:
                    rhos[i] += interpolation * (non_zero[index] - non_zero[index - 1])
            else:
                rhos[i] = interpolation * non_zero[0]
        elif non_zero.shape[0] > 0:
            rhos[i] = np.max(non_zero)

        for _ in range(n_iter):
            psum = 0.0
            for j in range(1, n_cols):  # column 0 (the point itself) is skipped
                d = row[j] - rhos[i]
                if d > 0:
                    psum += math.exp(-(d / mid))
                else:
                    psum += 1.0

            if abs(psum - target) < SMOOTH_K_TOLERANCE:
                break

            if psum > target:
                hi = mid
                mid = (lo + hi) / 2.0
            else:
                lo = mid
                if hi == math.inf:
                    mid *= 2.0
                else:
                    mid = (lo + hi) / 2.0

        sigmas[i] = mid

        if rhos[i] > 0.0:
            mean_ith = float(np.mean(row))
            if sigmas[i] < MIN_K_DIST_SCALE * mean_ith:
                sigmas[i] = MIN_K_DIST_SCALE * mean_ith
        else:
            if sigmas[i] < MIN_K_DIST_SCALE * mean_distances:
                sigmas[i] = MIN_K_DIST_SCALE * mean_distances

    return sigmas, rhos


# --------------------------------------------------------------------------------------------
# 3. fuzzy union (dense)
# --------------------------------------------------------------------------------------------
def membership_ref(indices, distances, sigmas, rhos, n):
    """Dense directed membership matrix A (n, n), A[i, indices[i, j]] = a_ij."""
    distances = _as_f64(distances)
    sigmas = _as_f64(sigmas)
    rhos = _as_f64(rhos)
    indices = np.asarray(indices)
    a = np.zeros((n, n), dtype=np.float64)
    n_rows, n_cols = indices.shape
    for i in range(n_rows):
        for j in range(n_cols):
            col = int(indices[i, j])
            if col == -1:
                continue  # absent neighbour
            if col == i:
                val = 0.0
            elif distances[i, j] - rhos[i] <= 0.0 or sigmas[i] == 0.0:
                val = 1.0
            else:
                val = math.exp(-((distances[i, j] - rhos[i]) / sigmas[i]))
            a[i, col] = val
    return a


def fuzzy_union_ref(indices, distances, sigmas, rhos, n):
    """Dense symmetric fuzzy graph S = A + A^T - A * A^T, (n, n) float64."""
    a = membership_ref(indices, distances, sigmas, rhos, n)
    return a + a.T - a * a.T


def fuzzy_graph_ref(x, n_neighbors=15):
    """S for one set of rows: q_eff = min(q, n) neighbours, self first, k_target = q_eff."""
    x = _as_f64(x)
    n = x.shape[0]
    q_eff = min(n_neighbors, n)
    dists, idx = knn_ref(x, x, q_eff, self_first=True)
    sigmas, rhos = smooth_knn_dist_ref(dists, q_eff)
    return fuzzy_union_ref(idx, dists, sigmas, rhos, n)


# --------------------------------------------------------------------------------------------
# 4. density weights
# --------------------------------------------------------------------------------------------
def block_size_ref(n, n_neighbors=15):
    """Block size b = min(1000, max(3q, 100)); one block of all n rows if n <= 3q."""
    q = n_neighbors
    if n <= 3 * q:
        return n
    return min(1000, max(3 * q, 100))


def row_distances_ref(s):
    """D_ij = ||S_i - S_j|| (Euclidean between rows of S)."""
    s = _as_f64(s)
    r = s.shape[0]
    d = np.zeros((r, r), dtype=np.float64)
    for i in range(r):
        d[i] = _euclidean_to_all(s[i], s)
    return d


def counts_ref(row_dists, rad):
    """c_i(rad) = #{j != i : D_ij <= rad}, as an int array (r,)."""
    r = row_dists.shape[0]
    c = np.zeros(r, dtype=np.int64)
    for i in range(r):
        for j in range(r):
            if j != i and row_dists[i, j] <= rad:
                c[i] += 1
    return c


def condition_ref(row_dists, rad, t, req, index_sum_quirk=False):
    """stat >= req, stat = #{i : c_i(rad) > t} (or the sum of those i with the quirk)."""
    c = counts_ref(row_dists, rad)
    qualifying = [i for i in range(len(c)) if c[i] > t]
    stat = sum(qualifying) if index_sum_quirk else len(qualifying)
    return stat >= req


def density_block_ref(xb, n_neighbors=15, tau=70, fraction=0.3, n_radii=4, index_sum_quirk=False):
    """Weights of one block of r rows. Returns (w (r,), info dict)."""
    xb = _as_f64(xb)
    r = xb.shape[0]
    info = {"r": r, "eps": None, "t": None, "req": None, "bisected": False, "lo": None, "hi": None}
    if r == 1:
        return np.zeros(1, dtype=np.float64), info

    s = fuzzy_graph_ref(xb, n_neighbors)
    dmat = row_distances_ref(s)
    off = [dmat[i, j] for i in range(r) for j in range(r) if i != j]
    lo = min(off)
    hi = max(off)

    tau_eff = min(tau, r - 1)
    required = math.floor(fraction * r)

    def cond(rad, t, req):
        return condition_ref(dmat, rad, t, req, index_sum_quirk)

    if cond(hi, tau_eff, required):
        t, req = tau_eff, required
    elif cond(hi, tau_eff / 2, required / 2):
        t, req = tau_eff / 2, required / 2
    else:
        t, req = None, None

    if t is None:
        eps = hi
    else:
        a, bb = lo, hi
        steps = 0
        while bb - a > BISECTION_TOL and steps < BISECTION_MAX_STEPS:
            mid = (a + bb) / 2.0
            if cond(mid, t, req):
                bb = mid
            else:
                a = mid
            steps += 1
        eps = bb
        info["bisected"] = True

    delta = (eps - RADIUS_OFFSET) / n_radii
    w = np.zeros(r, dtype=np.float64)
    for m in range(n_radii):
        w += counts_ref(dmat, eps - m * delta)
    w /= n_radii
    info.update(eps=eps, t=t, req=req, lo=lo, hi=hi)
    return w, info


def density_weights_ref(x, n_neighbors=15, tau=70, fraction=0.3, n_radii=4, index_sum_quirk=False):
    """The published block-wise density weights, (n,) float64."""
    x = _as_f64(x)
    n = x.shape[0]
    b = block_size_ref(n, n_neighbors)
    w = np.zeros(n, dtype=np.float64)
    start = 0
    while start < n:
        stop = min(start + b, n)
        wb, _ = density_block_ref(
            x[start:stop], n_neighbors, tau, fraction, n_radii, index_sum_quirk
        )
        w[start:stop] = wb
        start = stop
    return w


def fuzzy_degree_ref(x, n_neighbors=15):
    """Row sums of one global fuzzy graph over all n rows, (n,) float64."""
    s = fuzzy_graph_ref(x, n_neighbors)
    return np.sum(s, axis=1)


# --------------------------------------------------------------------------------------------
# 5. blurring weighted mean shift
# --------------------------------------------------------------------------------------------
def _weighted_mean(rows, w):
    num = np.zeros(rows.shape[1], dtype=np.float64)
    den = 0.0
    for j in range(rows.shape[0]):
        num += w[j] * rows[j]
        den += w[j]
    return num / max(den, WEIGHT_FLOOR)


def mean_shift_ref(x, weights, k=50, step_size=0.33, max_iter=8, tol=0.01, iterates=None):
    """Blurring weighted mean shift. Returns (Y (n, d), D (n,), n_iter int); a list given as
    ``iterates`` receives a copy of Y as each iteration starts."""
    y = _as_f64(x).copy()
    w = _as_f64(weights)
    n = y.shape[0]
    disp = np.zeros(n, dtype=np.float64)
    k_eff = min(k, n)
    n_iter = 0
    for t in range(max_iter):
        if iterates is not None:
            iterates.append(y.copy())
        _, idx = knn_ref(y, y, k_eff)  # plain brute force, self not forced
        old = y.copy()
        deltas = np.zeros(n, dtype=np.float64)
        for i in range(n):
            nb = idx[i]
            m_i = _weighted_mean(old[nb], w[nb])
            delta = float(np.sqrt(np.sum((m_i - old[i]) ** 2)))
            deltas[i] = delta
            if delta > MOVE_THRESHOLD:
                y[i] = old[i] + step_size * (m_i - old[i])
        disp += deltas
        n_iter = t + 1
        if np.mean(deltas) < tol:
            break
    return y, disp, n_iter


# --------------------------------------------------------------------------------------------
# 6. inductive (non-blurring) mean shift
# --------------------------------------------------------------------------------------------
def inductive_mean_shift_ref(
    queries, reference, reference_weights, k=50, step_size=0.33, max_iter=8, tol=0.01
):
    """Shift each query towards a fixed reference. Returns (Y (m, d), D (m,), n_iter (m,))."""
    queries = _as_f64(queries)
    reference = _as_f64(reference)
    w = _as_f64(reference_weights)
    m = queries.shape[0]
    k_eff = min(k, reference.shape[0])
    y_out = queries.copy()
    disp = np.zeros(m, dtype=np.float64)
    n_iter = np.zeros(m, dtype=np.int64)
    for p in range(m):
        y = queries[p].copy()
        for t in range(max_iter):
            _, idx = knn_ref(y[None, :], reference, k_eff)
            nb = idx[0]
            m_p = _weighted_mean(reference[nb], w[nb])
            delta = float(np.sqrt(np.sum((m_p - y) ** 2)))
            if delta > MOVE_THRESHOLD:
                y = y + step_size * (m_p - y)
            disp[p] += delta
            n_iter[p] = t + 1
            if delta < tol:
                break
        y_out[p] = y
    return y_out, disp, n_iter
