"""The advisor learns from the lab: a lab's findings.json puts the measured verdict beside
the guide's rule, with a link to its section, wherever the verdict is not "holds"."""

import json

import pytest

from layerwise import config
from layerwise.advice import evidence
from layerwise.advice.rules import check, suggest
from layerwise.cli import main


def _findings(**verdicts):
    exps = {
        name: {
            "title": f"T {name}",
            "anchor": f"t-{name}",
            "verdict": v,
            "why": f"why {name}.",
            "recommend": f"do {name}.",
        }
        for name, v in verdicts.items()
    }
    return {
        "data": "mnist",
        "budget": "full",
        "commit": "abc",
        "date": "2026-12-02",
        "page": "docs/TRICKS.md",
        "experiments": exps,
    }


def test_a_rule_the_lab_contradicts_gives_both_the_guide_and_the_measurement():
    found = _findings(averaging="does not hold", widths="holds", batch="holds in part")
    hp = suggest(784, 10, workers=4, findings=found)["hyperparameters"]
    lr = hp["learning_rate"]["why"]
    assert (
        lr.startswith("the guide: ")
        and "Measured on mnist (docs/TRICKS.md#t-averaging): the guide's rule "
        "does not hold. why averaging. layerwise recommends: do averaging."
        in lr
    )
    assert "docs/TRICKS.md#t-batch" in hp["batch_size"]["why"]
    assert "Measured" not in hp["hidden"]["why"]  # widths: the rule held, the guide's reason alone
    assert "TRICKS.md" not in suggest(784, 10, workers=4, findings=None)["hyperparameters"]["batch_size"]["why"]


def test_check_cites_the_measurement_on_its_findings():
    cfg = config.from_dict({"pretrain": {"learning_rate": 0.1, "batch_size": 500}})
    plain = {f.rule: f.why for f in check(cfg, n_inputs=784, workers=4, findings=None)}
    cited = {
        f.rule: f.why
        for f in check(cfg, n_inputs=784, workers=4, findings=_findings(averaging="holds in part", batch="holds"))
    }
    assert set(plain) == set(cited) and {"lr-with-workers", "batch-size"} <= set(plain)
    assert (
        cited["lr-with-workers"] == f"the guide: {plain['lr-with-workers']}. Measured on mnist "
        "(docs/TRICKS.md#t-averaging): the guide's rule holds in part. why averaging. layerwise recommends: do averaging."
    )
    assert cited["batch-size"] == plain["batch-size"]


def test_a_bad_findings_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(ValueError, match="findings '.*nope.json': cannot be read"):
        evidence.load(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json': not JSON"):
        evidence.load(bad)
    bad.write_text(json.dumps({"experiments": {"depth": {"title": "x", "verdict": "holds"}}}))
    with pytest.raises(ValueError, match="experiment 'depth' lacks anchor, why, recommend"):
        evidence.load(bad)
    assert main(["advise", "--inputs", "784", "--labels", "10", "--findings", str(bad)]) == 2


def test_advise_and_check_read_a_findings_file(tmp_path, capsys):
    path = tmp_path / "findings.json"
    path.write_text(json.dumps(_findings(averaging="does not hold")))
    assert main(["advise", "--inputs", "784", "--labels", "10", "--workers", "2", "--findings", str(path)]) == 0
    assert "Measured on mnist (docs/TRICKS.md#t-averaging)" in capsys.readouterr().out
    recipe = tmp_path / "r.toml"
    recipe.write_text('[data]\nsource = "digits"\n[pretrain]\nlearning_rate = 0.3\n')
    assert main(["check", str(recipe), "--workers", "2", "--findings", str(path), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    lr = [f for f in out["findings"] if f["rule"] == "lr-with-workers"]
    assert len(lr) == 1 and "the guide's rule does not hold" in lr[0]["why"]


@pytest.mark.parametrize(
    "title, anchor",
    [
        ("Averaging and the learning rate", "averaging-and-the-learning-rate"),
        ("Depth, at equal weights", "depth-at-equal-weights"),
        ("Does averaging speed up learning?", "does-averaging-speed-up-learning"),
    ],
)
def test_anchors_are_githubs(title, anchor):
    assert evidence.anchor(title) == anchor
