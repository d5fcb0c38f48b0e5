"""Balanced K-means (docs/METHOD.md section 1): exact balance, determinism, the fast path equals the paper's loop."""

import pytest
import torch

from torchrec_onerec.tokenizer.balanced_kmeans import BalancedKMeans, balanced_sizes
from torchrec_onerec.tokenizer.kmeans import KMeans


def _points(n: int, d: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("n,k", [(100, 10), (101, 10), (257, 16), (64, 64), (1000, 7), (5, 1), (999, 300)])
@pytest.mark.parametrize("algorithm", ["fast", "reference"])
def test_sizes_differ_by_at_most_one(n: int, k: int, algorithm: str) -> None:
    result = BalancedKMeans(k, max_iter=4, seed=1, algorithm=algorithm).fit(_points(n, 6))
    sizes = result.cluster_sizes()
    assert sizes.sum() == n and int(sizes.max() - sizes.min()) <= 1
    assert sizes.tolist() == balanced_sizes(n, k)
    assert torch.allclose(result.centroids, torch.stack([_points(n, 6)[result.labels == c].mean(0) for c in range(k)]))


@pytest.mark.parametrize("n,k,chunk", [(300, 7, 8192), (1000, 32, 1), (2000, 100, 3), (600, 200, 8192)])
def test_fast_equals_reference(n: int, k: int, chunk: int) -> None:
    x = _points(n, 8, seed=n, dtype=torch.float64)  # float64: no distance ties between the two computations
    ref = BalancedKMeans(k, max_iter=5, seed=3, algorithm="reference").fit(x)
    fast = BalancedKMeans(k, max_iter=5, seed=3, chunk_size=chunk).fit(x)
    assert torch.equal(ref.labels, fast.labels)
    assert torch.allclose(ref.centroids, fast.centroids)
    assert ref.iterations == fast.iterations and ref.converged == fast.converged
    assert fast.inertia == pytest.approx(ref.inertia)


def test_fast_equals_reference_when_the_sample_places_a_threshold_too_low(monkeypatch: pytest.MonkeyPatch) -> None:
    import torchrec_onerec.tokenizer.balanced_kmeans as module

    n = 20000
    x = 5 + 5 * _points(n, 2, seed=5, dtype=torch.float64).abs()
    rows = torch.arange(0, n, 9)  # the rows the strided sample reads: near the first centroid, the rest far
    x[rows] = 0.1 * _points(rows.numel(), 2, seed=6, dtype=torch.float64)
    centroids = torch.cat([torch.zeros(1, 2, dtype=torch.float64), x[1:1800:200]])  # K = 10, w = 2000
    exact_calls = []
    real = module._exact_thresholds
    monkeypatch.setattr(module, "_exact_thresholds", lambda *a: exact_calls.append(1) or real(*a))
    sizes = balanced_sizes(n, 10)
    fast, _ = module.assign_fast(x, (x * x).sum(1), centroids, sizes, budget=1 << 26)
    assert exact_calls, "the sample saw only near points, so its threshold held too few of them"
    assert torch.equal(fast, module.assign_reference(x, centroids.clone(), sizes))


def test_fast_rescans_keep_balance_on_duplicates() -> None:
    x = _points(40, 3).repeat(25, 1)  # 1000 points, 40 distinct: heavy ties and short candidate lists
    result = BalancedKMeans(64, max_iter=6, seed=0, chunk_size=1).fit(x)
    assert int(result.cluster_sizes().max() - result.cluster_sizes().min()) <= 1


def test_deterministic_per_seed_and_seed_matters() -> None:
    x = _points(800, 16)
    a = BalancedKMeans(20, max_iter=5, seed=7).fit(x)
    b = BalancedKMeans(20, max_iter=5, seed=7).fit(x)
    c = BalancedKMeans(20, max_iter=5, seed=8).fit(x)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.centroids, b.centroids)
    assert not torch.equal(a.labels, c.labels)


def test_converges_on_separated_blobs_and_reports() -> None:
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    x = (centres.repeat_interleave(50, 0) + 0.1 * _points(200, 2)).float()
    result = BalancedKMeans(4, max_iter=30, seed=0).fit(x)
    assert result.converged and 1 <= result.iterations < 30
    assert torch.unique(result.labels.view(4, 50), dim=1).shape[1] == 1  # each blob is one cluster
    assert result.inertia == pytest.approx(float(((x - result.centroids[result.labels]) ** 2).sum()), rel=1e-4)


@pytest.mark.parametrize("model", [BalancedKMeans, KMeans])
def test_tolerance_stops_once_a_round_gains_little(model: type) -> None:
    centres = 3 * _points(30, 8, seed=1)
    x = centres.repeat_interleave(100, 0) + _points(3000, 8)  # clustered, like item embeddings
    strict = model(60, max_iter=40, seed=0).fit(x)
    loose = model(60, max_iter=40, seed=0, tolerance=0.005).fit(x)
    assert loose.converged and 7 <= loose.iterations < strict.iterations
    # the loose fit is the strict one stopped early: the same rounds up to its last
    early = model(60, max_iter=loose.iterations, seed=0).fit(x)
    assert torch.equal(early.labels, loose.labels) and not early.converged
    # its last three rounds lowered the squared error by at most 0.5%; the three before its previous round by more
    errors = [model(60, max_iter=loose.iterations - j, seed=0).fit(x).inertia for j in (4, 3, 1)] + [loose.inertia]
    assert errors[1] - errors[3] <= 0.005 * errors[1] * (1 + 1e-5)
    assert errors[0] - errors[2] > 0.005 * errors[0]
    with pytest.raises(ValueError, match=r"tolerance=1.0 must be in \[0, 1\)"):
        model(60, tolerance=1.0)


@pytest.mark.parametrize("model", [BalancedKMeans, KMeans])
def test_bad_input(model: type) -> None:
    with pytest.raises(ValueError, match="K=11 clusters is larger than the number of points N=10"):
        model(11).fit(_points(10, 3))
    with pytest.raises(ValueError, match="width d=0"):
        model(2).fit(torch.zeros(10, 0))
    bad = _points(10, 3)
    bad[4, 1] = float("nan")
    bad[7, 0] = float("inf")
    with pytest.raises(ValueError, match=r"NaN or inf in 2 rows, e.g. rows \[4, 7\]"):
        model(2).fit(bad)
    with pytest.raises(ValueError, match="max_iter=0"):
        model(2, max_iter=0)


def test_plain_kmeans_reaches_a_lloyd_fixed_point_and_fills_empty_clusters() -> None:
    x = _points(500, 4)
    result = KMeans(8, seed=2, max_iter=100).fit(x)
    assert result.converged
    nearest = torch.cdist(x, result.centroids).argmin(dim=1)
    assert torch.equal(nearest, result.labels)  # every point sits with its nearest centroid ...
    means = torch.stack([x[result.labels == c].mean(0) for c in range(8)])
    assert torch.allclose(means, result.centroids, atol=1e-5)  # ... which is its cluster's mean
    dup = torch.zeros(20, 2)
    dup[10:] = 1.0  # two distinct points, four clusters: no cluster may stay empty
    assert (KMeans(4, seed=0, max_iter=3).fit(dup).cluster_sizes() > 0).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_matches_cpu_balance() -> None:
    x = _points(3000, 16)
    result = BalancedKMeans(50, max_iter=3, seed=0).fit(x.cuda())
    assert result.labels.is_cuda and result.cluster_sizes().tolist() == balanced_sizes(3000, 50)
