from pathlib import Path

import pytest

from layerwise import config

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.toml"))


@pytest.mark.parametrize(
    "d, message",
    [
        ({"pretrain": {"learning_rat": 0.1}}, "unknown config key 'pretrain.learning_rat'; did you mean 'pretrain.learning_rate'?"),
        ({"colour": "red"}, "unknown config key 'colour'"),
        ({"pretrain": {"epochs": "ten"}}, "config key 'pretrain.epochs' must be an integer; got 'ten'"),
        ({"pretrain": {"epochs": 2.5}}, "config key 'pretrain.epochs' must be an integer; got 2.5"),
        ({"pretrain": {"persistent": 1}}, "config key 'pretrain.persistent' must be true or false; got 1"),
        ({"pretrain": {"learning_rate": 0}}, "config key 'pretrain.learning_rate' must be in the range (0, inf); got 0.0"),
        ({"finetune": {"dropout_hidden": 1.0}}, "config key 'finetune.dropout_hidden' must be in the range [0, 1); got 1.0"),
        ({"finetune": {"optimizer": "rmsprop"}}, "config key 'finetune.optimizer' must be one of 'sgd', 'adam'; got 'rmsprop'"),
        ({"model": {"hidden": 500}}, "config key 'model.hidden' must be a list of integers; got 500"),
        ({"model": {"hidden": [500, 0]}}, "config key 'model.hidden[1]' must be at least 1; got 0"),
        ({"model": "rbm"}, "config key 'model' must be a table [model]; got 'rbm'"),
        ({"data": {"source": "npz"}}, "config key 'data.train' must name a .npz file"),
        ({"data": {"train": "a.npz"}}, "config key 'data.train' is only used with data.source = \"npz\""),
        ({"pretrain": {"sparsity_cost": 0.1}}, "'pretrain.sparsity_cost' is set but 'pretrain.sparsity_target' is not"),
        ({"model": {"unit": "autoencoder", "visible": "gaussian"}}, "must be \"bernoulli\" for model.unit = \"autoencoder\""),
    ],
)
def test_bad_config_names_the_key(d, message):
    with pytest.raises(ValueError) as e:
        config.from_dict(d)
    assert message in str(e.value)


def test_defaults_follow_the_guide():
    cfg = config.RunConfig()
    assert cfg.pretrain.learning_rate == 0.01 and cfg.finetune.learning_rate == 0.01
    assert cfg.pretrain.epochs == 30


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipes_load_and_round_trip(recipe, tmp_path):
    cfg = config.load(recipe)
    assert cfg.name == recipe.stem
    again = tmp_path / "again.toml"
    again.write_text(config.to_toml(cfg))
    back = config.load(again)
    back.name = cfg.name
    assert back == cfg


def test_hinton_recipe_is_the_classic_net():
    cfg = config.load(Path(__file__).parent.parent / "recipes" / "hinton-mnist.toml")
    assert cfg.model.hidden == [500, 500, 2000]
    p = cfg.pretrain
    assert (p.epochs, p.cd_k, p.learning_rate, p.momentum, p.final_momentum, p.weight_decay, p.batch_size) == (
        30, 1, 0.1, 0.5, 0.9, 2e-4, 100)


def test_recipe_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[pretrain]\nepochs = \n")
    with pytest.raises(ValueError, match="recipe '.*bad.toml' is not valid TOML"):
        config.load(bad)
    bad.write_text("[pretrain]\nepoch = 3\n")
    with pytest.raises(ValueError, match="recipe '.*bad.toml': unknown config key 'pretrain.epoch'"):
        config.load(bad)
    with pytest.raises(FileNotFoundError, match="recipe '.*nope.toml' does not exist"):
        config.load(tmp_path / "nope.toml")


def test_npz_paths_are_relative_to_the_recipe(tmp_path):
    (tmp_path / "sub").mkdir()
    r = tmp_path / "sub" / "r.toml"
    r.write_text('name = "x"\n[data]\nsource = "npz"\ntrain = "d/train.npz"\n')
    cfg = config.load(r)
    assert cfg.data.train == str(tmp_path / "sub" / "d" / "train.npz") and cfg.name == "x"
