"""Plain NumPy / SciPy float64 references for every similarity measure, written from the papers' formulas.

Deliberately naive (explicit Grams, centering matrices, matrix traces, SciPy distances and correlations) so
they share no shortcut with xsim's implementation.
"""
import numpy as np
import scipy.linalg
import scipy.spatial.distance
import scipy.stats


def preprocess(x, method="none", quantile=0.99, k=0, outlier_by="max_abs"):
  x = np.array(x, np.float64)
  if method == "none":
    return x
  if method == "center":
    return x - x.mean(0)
  if method == "standardize":
    std = x.std(0)
    std[std == 0] = 1.0
    return (x - x.mean(0)) / std
  if method == "clip":
    bound = np.quantile(np.abs(x), quantile)
    return np.clip(x, -bound, bound)
  if method == "drop_outliers":
    score = np.abs(x).max(0) if outlier_by == "max_abs" else x.var(0)
    keep = np.argsort(score)[: x.shape[1] - k]
    return x[:, np.sort(keep)]  # removal, where xsim zeroes
  if method == "l2":
    return x / np.linalg.norm(x, axis=1, keepdims=True)
  raise ValueError(method)


def hsic_biased(k, l):
  n = k.shape[0]
  h = np.eye(n) - np.ones((n, n)) / n
  return np.trace(k @ h @ l @ h) / (n - 1) ** 2


def hsic_unbiased(k, l):
  """Song et al. 2012, eq. 5."""
  n = k.shape[0]
  kt, lt = k - np.diag(np.diag(k)), l - np.diag(np.diag(l))
  one = np.ones(n)
  return (np.trace(kt @ lt) + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
          - 2.0 / (n - 2) * (one @ kt @ lt @ one)) / (n * (n - 3))


def cka_grams(k, l, debiased):
  hsic = hsic_unbiased if debiased else hsic_biased
  return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def linear_cka(x, y, debiased=False):
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  return cka_grams(x @ x.T, y @ y.T, debiased)


def rbf_gram(x, bandwidth=1.0):
  """Kornblith et al.'s gram_rbf: s^2 = bandwidth^2 * median of all squared distances."""
  x = np.asarray(x, np.float64)
  sq = scipy.spatial.distance.cdist(x, x, "sqeuclidean")
  return np.exp(-sq / (2.0 * bandwidth**2 * np.median(sq)))


def rbf_cka(x, y, bandwidth=1.0, debiased=False):
  return cka_grams(rbf_gram(x, bandwidth), rbf_gram(y, bandwidth), debiased)


def minibatch_cka(x, y, batch_size, debiased=True):
  """Nguyen et al. 2021: HSIC averaged over consecutive minibatches, then normalized."""
  hsic = hsic_unbiased if debiased else hsic_biased
  xy = xx = yy = 0.0
  for start in range(0, x.shape[0], batch_size):
    xb, yb = np.asarray(x[start:start + batch_size], np.float64), np.asarray(y[start:start + batch_size], np.float64)
    k, l = xb @ xb.T, yb @ yb.T
    xy, xx, yy = xy + hsic(k, l), xx + hsic(k, k), yy + hsic(l, l)
  return xy / np.sqrt(xx * yy)


def knn_sets(x, k):
  g = np.asarray(x, np.float64) @ np.asarray(x, np.float64).T
  np.fill_diagonal(g, -np.inf)
  return [set(np.argsort(-row, kind="stable")[:k]) for row in g]


def mutual_knn(x, y, k):
  return np.mean([len(a & b) / k for a, b in zip(knn_sets(x, k), knn_sets(y, k))])


def cknna(x, y, k, debiased=True):
  """Huh et al. 2024: HSIC of the Grams restricted to mutual k-NN pairs."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  n = x.shape[0]
  def mask(sets):
    m = np.zeros((n, n))
    for i, s in enumerate(sets):
      m[i, list(s)] = 1.0
    return m
  mx, my = mask(knn_sets(x, k)), mask(knn_sets(y, k))
  kx, ky = x @ x.T, y @ y.T
  hsic = hsic_unbiased if debiased else hsic_biased
  both = mx * my
  return hsic(both * kx, both * ky) / np.sqrt(hsic(mx * kx, mx * kx) * hsic(my * ky, my * ky))


def procrustes(x, y):
  """1 - min_R |X^ - Y^ R|_F^2 / 2 over orthogonal R (SciPy's solver; needs d1 == d2), X^ centered, unit norm."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  x, y = x - x.mean(0), y - y.mean(0)
  x, y = x / np.linalg.norm(x), y / np.linalg.norm(y)
  r, _ = scipy.linalg.orthogonal_procrustes(y, x)
  return 1.0 - np.linalg.norm(x - y @ r) ** 2 / 2.0


def svcca(x, y, keep=0.99, dims=None):
  """Raghu et al. 2017: SVD-reduce each side, then CCA by whitening the covariance blocks."""
  def reduce(a):
    a = np.asarray(a, np.float64)
    a = a - a.mean(0)
    u, s, _ = np.linalg.svd(a, full_matrices=False)
    k = dims if dims is not None else min(int(np.searchsorted(np.cumsum(s**2) / np.sum(s**2), keep) + 1), len(s))
    return u[:, :k] * s[:k]
  a, b = reduce(x), reduce(y)
  inv_sqrt = lambda c: scipy.linalg.fractional_matrix_power(c, -0.5)
  t = inv_sqrt(a.T @ a) @ (a.T @ b) @ inv_sqrt(b.T @ b)
  rho = np.linalg.svd(np.real(t), compute_uv=False)
  return rho[: min(a.shape[1], b.shape[1])].mean()


def rsa(x, y, rdm="correlation", compare="spearman"):
  a = scipy.spatial.distance.pdist(np.asarray(x, np.float64), rdm)
  b = scipy.spatial.distance.pdist(np.asarray(y, np.float64), rdm)
  stat = scipy.stats.spearmanr if compare == "spearman" else scipy.stats.pearsonr
  return stat(a, b)[0]
