"""layerwise.sklearn.BernoulliRBM as a drop-in for scikit-learn's: the same usage with the
import swapped, results of the same quality, scikit-learn's own estimator checks, the
meta-estimators, and saving as a layerwise artifact."""

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.neural_network import BernoulliRBM as SklearnRBM  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402
from sklearn.utils.estimator_checks import check_estimator  # noqa: E402

from layerwise.sklearn import EXPECTED_FAILED_CHECKS, BernoulliRBM  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return d.data / 16.0, d.target


def test_scikit_learns_estimator_checks_pass():
    results = check_estimator(
        BernoulliRBM(n_components=8, n_iter=5), expected_failed_checks=EXPECTED_FAILED_CHECKS, on_fail=None
    )
    failed = [(r["check_name"], repr(r["exception"])[:300]) for r in results if r["status"] == "failed"]
    assert not failed
    assert sum(r["status"] == "passed" for r in results) >= 40
    xfailed = {r["check_name"] for r in results if r["status"] == "xfail"}
    assert xfailed <= set(EXPECTED_FAILED_CHECKS)


def test_the_same_random_state_starts_from_scikit_learns_weights(digits):
    x, _ = digits
    ours = BernoulliRBM(n_components=16, n_iter=0, random_state=3).fit(x)
    theirs = SklearnRBM(n_components=16, n_iter=0, random_state=3).fit(x)
    np.testing.assert_array_equal(ours.components_, theirs.components_)
    np.testing.assert_array_equal(ours.intercept_visible_, theirs.intercept_visible_)
    assert ours.h_samples_.shape == theirs.h_samples_.shape == (10, 16)
    # scikit-learn's score_samples flips the same features for the same random_state
    np.testing.assert_allclose(ours.score_samples(x), theirs.score_samples(x), rtol=1e-10)


def test_scikit_learns_usage_with_the_import_swapped(digits):
    """Pseudo-likelihood within 5% of scikit-learn's at the same settings, after fit and
    after a partial_fit; gibbs and transform with scikit-learn's shapes and types."""
    x, _ = digits
    scores = {}
    for cls in (SklearnRBM, BernoulliRBM):
        rbm = cls(n_components=64, learning_rate=0.06, n_iter=10, random_state=0)
        rbm.fit(x)
        fitted = rbm.score_samples(x).mean()
        v = rbm.gibbs(x[:7])
        assert v.shape == (7, 64) and v.dtype == bool
        h = rbm.transform(x[:5])
        assert h.shape == (5, 64) and h.dtype == np.float64 and 0 <= h.min() <= h.max() <= 1
        rbm.partial_fit(x[:200])
        scores[cls] = (fitted, rbm.score_samples(x).mean())
    for ours, theirs in zip(scores[BernoulliRBM], scores[SklearnRBM]):
        assert abs(ours - theirs) <= 0.05 * abs(theirs), scores
    assert scores[BernoulliRBM][0] > -25  # learned: an untrained RBM scores about -44 here


def test_partial_fit_from_scratch_learns(digits):
    x, _ = digits
    rbm = BernoulliRBM(n_components=32, random_state=0, learning_rate=0.05)
    rbm.partial_fit(x[:10])
    start = rbm.score_samples(x).mean()
    for i in range(0, 1790, 10):
        rbm.partial_fit(x[i : i + 10])
    assert rbm.score_samples(x).mean() > start + 5


@pytest.mark.slow
def test_it_works_in_pipelines_grid_search_and_clone(digits):
    x, y = digits[0][:900], digits[1][:900]  # half the digits: the same choice, a quarter of the time
    best = {}
    for cls in (BernoulliRBM, SklearnRBM):
        pipe = Pipeline(
            [("rbm", cls(n_iter=5, random_state=0, learning_rate=0.06)), ("clf", LogisticRegression(max_iter=300))]
        )
        search = GridSearchCV(pipe, {"rbm__n_components": [16, 64]}, cv=2).fit(x, y)
        best[cls] = (search.best_params_, search.best_score_)
    assert best[BernoulliRBM][0] == best[SklearnRBM][0] == {"rbm__n_components": 64}
    assert abs(best[BernoulliRBM][1] - best[SklearnRBM][1]) < 0.03, best
    c = clone(BernoulliRBM(n_components=5, method="cd", k=2, momentum=0.5))
    assert c.get_params()["method"] == "cd" and c.get_params()["k"] == 2 and not hasattr(c, "components_")


@pytest.mark.parametrize(
    "options",
    [{"method": "cd", "k": 2}, {"momentum": 0.5, "weight_decay": 1e-4}, {"visible": "gaussian", "learning_rate": 0.01}],
)
def test_the_extra_parameters_train(digits, options):
    x, _ = digits
    if options.get("visible") == "gaussian":
        x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    rbm = BernoulliRBM(n_components=32, n_iter=3, random_state=0, **options).fit(x)
    assert np.isfinite(rbm.components_).all() and np.abs(rbm.components_).max() > 0.05  # moved from N(0, 0.01)
    assert np.isfinite(rbm.score_samples(x)).all()


def test_a_fitted_rbm_saves_and_loads_as_an_artifact(digits, tmp_path):
    x, _ = digits
    rbm = BernoulliRBM(n_components=16, n_iter=2, random_state=0, momentum=0.5).fit(x)
    rbm.save(tmp_path / "rbm")
    assert sorted(p.name for p in (tmp_path / "rbm").iterdir()) == ["manifest.json", "weights.safetensors"]
    back = BernoulliRBM.load(tmp_path / "rbm")
    assert back.get_params() == rbm.get_params()
    np.testing.assert_array_equal(back.transform(x), rbm.transform(x))
    # the generator and the momentum go on where they were: the next partial_fit is the same
    np.testing.assert_array_equal(back.partial_fit(x[:50]).components_, rbm.partial_fit(x[:50]).components_)
    with pytest.raises(FileExistsError):
        rbm.save(tmp_path / "rbm")
    with pytest.raises(ValueError, match="not plain values"):
        BernoulliRBM(random_state=np.random.RandomState(0)).fit(x[:20]).save(tmp_path / "other")
    (tmp_path / "rbm" / "weights.safetensors").chmod(0o644)
    with open(tmp_path / "rbm" / "weights.safetensors", "r+b") as f:
        f.truncate(100)
    with pytest.raises(ValueError, match="does not match its manifest"):
        BernoulliRBM.load(tmp_path / "rbm")


def test_bad_input_is_refused_with_scikit_learns_errors(digits):
    x, _ = digits
    bad = x[:20].copy()
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        BernoulliRBM().fit(bad)
    rbm = BernoulliRBM(n_components=4, n_iter=1).fit(x[:50])
    with pytest.raises(ValueError, match="features"):
        rbm.transform(x[:5, :10])
    with pytest.raises(ValueError, match="n_components"):
        BernoulliRBM(n_components=0).fit(x[:20])


def test_a_saved_estimator_is_listed_among_the_models(digits, tmp_path, capsys):
    from layerwise.cli import main

    x, _ = digits
    BernoulliRBM(n_components=4, n_iter=1, random_state=0).fit(x).save(tmp_path / "m" / "rbm")
    assert main(["models", str(tmp_path / "m")]) == 0
    assert "estimator  sklearn BernoulliRBM" in capsys.readouterr().out
