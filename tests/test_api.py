"""The public face: `import layerwise as lw` and the README's Python section, run as
written."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import layerwise as lw

ROOT = Path(__file__).parent.parent


def test_the_package_imports_nothing_heavy_until_a_name_is_used():
    code = (
        "import sys, layerwise as lw; heavy = {'torch', 'numpy'} & set(sys.modules); "
        "print(sorted(heavy), lw.train.__module__, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["[]", "layerwise.api", "True"], out


def test_every_public_name_resolves_and_unknown_names_are_refused():
    assert set(lw.__all__) == {"__version__", *lw._PUBLIC}
    for name in lw.__all__:
        assert getattr(lw, name) is not None, name
    assert lw.Recipe is lw.config.RunConfig
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        lw.nothing  # noqa: B018


def test_settings_are_checked_as_a_recipe_is():
    digits = lw.data.load_digits()
    dbn = lw.DeepBeliefNet(64, [16], seed=0)
    with pytest.raises(
        lw.LayerwiseError, match="unknown config key 'pretrain.learning_rat'; did you mean 'pretrain.learning_rate'"
    ):
        lw.pretrain(dbn, digits.train, learning_rat=0.1)
    with pytest.raises(
        ValueError,
        match=r"'pretrain.batch_size' parameter of the recipe must be an int in the range "
        r"\[1, inf\)\. Got 0 instead",
    ):
        lw.pretrain(dbn, digits.train, batch_size=0)
    with pytest.raises(ValueError, match="fine-tuning needs labels"):
        lw.finetune(dbn.to_classifier(10), digits.train.x)


def test_bad_data_is_refused_by_name_before_training():
    import numpy as np

    x = np.full((20, 64), 0.5, dtype=np.float32)
    x[3, 7] = np.nan
    dbn = lw.DeepBeliefNet(64, [16], seed=0)
    before = {k: v.clone() for k, v in dbn.state_dict().items()}
    with pytest.raises(ValueError, match="training data.*NaN"):
        lw.pretrain(dbn, x, epochs=1)
    assert all((before[k] == v).all() for k, v in dbn.state_dict().items())  # nothing trained
    with pytest.raises(ValueError, match=r"the pair \(x, y\); got 3 items"):
        lw.evaluate(dbn.to_classifier(10), (x, x, x))


@pytest.mark.slow
def test_the_readme_python_section_runs_as_written(tmp_path, monkeypatch, capsys):
    text = (ROOT / "README.md").read_text()
    snippet = re.search(r"## Python\n\n```python\n(.*?)```", text, re.S).group(1)
    (tmp_path / "recipes").mkdir()
    shutil.copy(ROOT / "recipes" / "digits.toml", tmp_path / "recipes")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(snippet, "README.md", "exec"), scope)
    shown = eval(capsys.readouterr().out.strip().splitlines()[0])
    assert shown["accuracy"] > 0.93 and shown["loss"] < 0.25, shown
    assert scope["result"].test_accuracy > 0.93, scope["result"]
    assert scope["manifest"]["kind"] == "finetuned" and (tmp_path / "runs" / "digits" / "pretrained").is_dir()
    assert scope["model"](lw.training.finetune.torch.zeros(1, 64)).shape == (1, 10)
