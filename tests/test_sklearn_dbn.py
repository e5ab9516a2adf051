"""DBNClassifier and DBNTransformer: scikit-learn's estimator checks, labels of any kind,
the meta-estimators, and saving as a layerwise artifact."""

import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402
from sklearn.utils.estimator_checks import check_estimator  # noqa: E402

from layerwise.sklearn import DBNClassifier, DBNTransformer  # noqa: E402

SMALL = dict(hidden=[32, 16], pretrain_epochs=3, batch_size=20, random_state=0)


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    return x[:1200], d.target[:1200], x[1200:], d.target[1200:]


@pytest.mark.slow
@pytest.mark.parametrize(
    "est",
    [
        DBNTransformer(hidden=[8, 6], pretrain_epochs=2, batch_size=10, random_state=0),
        DBNClassifier(hidden=[8, 6], pretrain_epochs=2, finetune_epochs=30, batch_size=10, random_state=0),
    ],
    ids=["transformer", "classifier"],
)
def test_scikit_learns_estimator_checks_pass(est):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the checks' data lie outside [0, 1]: each fit warns
        results = check_estimator(est, on_fail=None)
    failed = [(r["check_name"], repr(r["exception"])[:300]) for r in results if r["status"] == "failed"]
    assert not failed and sum(r["status"] == "passed" for r in results) >= 40


@pytest.mark.slow
def test_the_classifier_learns_the_digits_with_any_labels(digits):
    x, y, xt, yt = digits
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    clf = DBNClassifier(**SMALL, finetune_epochs=30).fit(x, names[y])
    assert list(clf.classes_) == sorted(names)
    assert clf.predict(xt[:3]).dtype == names.dtype
    acc = clf.score(xt, names[yt])
    assert acc > 0.85, acc
    proba = clf.predict_proba(xt)
    assert proba.shape == (len(xt), 10) and np.allclose(proba.sum(1), 1, atol=1e-6)
    assert (clf.classes_[proba.argmax(1)] == clf.predict(xt)).all()
    # the same random_state: the same net
    again = DBNClassifier(**SMALL, finetune_epochs=30).fit(x, names[y])
    np.testing.assert_array_equal(again.predict_proba(xt), proba)
    assert clf.stack_.keys() == DBNTransformer(**SMALL).fit(x).stack_.keys()


@pytest.mark.slow
def test_the_transformer_feeds_a_pipeline_and_a_grid_search(digits):
    x, y, xt, yt = digits
    pipe = Pipeline(
        [("dbn", DBNTransformer(**{**SMALL, "pretrain_epochs": 10})), ("clf", LogisticRegression(max_iter=500))]
    )
    search = GridSearchCV(pipe, {"dbn__hidden": [[4, 4], [48, 32]]}, cv=2).fit(x, y)
    assert search.best_params_ == {"dbn__hidden": [48, 32]} and search.score(xt, yt) > 0.8
    f = DBNTransformer(**SMALL).fit(x).transform(xt)
    assert f.shape == (len(xt), 16) and f.dtype == np.float32 and 0 <= f.min() <= f.max() <= 1
    c = clone(DBNClassifier(hidden=[5], dropout=0.2))
    assert c.get_params()["hidden"] == [5] and c.get_params()["dropout"] == 0.2 and not hasattr(c, "net_")


def test_fitted_estimators_save_and_load_as_artifacts(digits, tmp_path):
    x, y, xt, _ = digits
    labels = np.array(["a", "b", "c"])[y % 3]
    clf = DBNClassifier(**SMALL, finetune_epochs=2).fit(x, labels)
    clf.save(tmp_path / "clf")
    back = DBNClassifier.load(tmp_path / "clf")
    np.testing.assert_array_equal(back.predict_proba(xt), clf.predict_proba(xt))
    assert list(back.predict(xt[:20])) == list(clf.predict(xt[:20])) and back.get_params() == clf.get_params()
    tr = DBNTransformer(**SMALL).fit(x)
    tr.save(tmp_path / "tr")
    np.testing.assert_array_equal(DBNTransformer.load(tmp_path / "tr").transform(xt), tr.transform(xt))
    with pytest.raises(ValueError, match="holds a DBNTransformer, not a saved DBNClassifier"):
        DBNClassifier.load(tmp_path / "tr")


def test_bad_input_is_refused_or_warned(digits):
    x, y, _, _ = digits
    with pytest.raises(ValueError, match="requires y"):
        DBNClassifier(**SMALL).fit(x, None)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        DBNClassifier(**SMALL).fit(x, y[:-1])
    with pytest.raises(ValueError, match="Unknown label type"):
        DBNClassifier(**SMALL).fit(x, np.linspace(0, 1, len(x)))
    with pytest.warns(UserWarning, match=r"models inputs in \[0, 1\]; X spans \[0, 16\]"):
        DBNTransformer(**{**SMALL, "pretrain_epochs": 0}).fit(x * 16)
    with pytest.raises(ValueError, match="hidden"):
        DBNTransformer(hidden="500").fit(x)
