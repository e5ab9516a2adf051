from pathlib import Path

import pytest

from layerwise import config

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.toml"))


@pytest.mark.parametrize(
    "d, message",
    [
        (
            {"pretrain": {"learning_rat": 0.1}},
            "unknown config key 'pretrain.learning_rat'; did you mean 'pretrain.learning_rate'?",
        ),
        ({"colour": "red"}, "unknown config key 'colour'"),
        # every value error reads as the units' and averaging's do (_checks)
        (
            {"pretrain": {"epochs": "ten"}},
            "The 'pretrain.epochs' parameter of the recipe must be an int in the range [0, inf). Got 'ten' (str) instead.",
        ),
        (
            {"pretrain": {"epochs": 2.5}},
            "The 'pretrain.epochs' parameter of the recipe must be an int in the range [0, inf). Got 2.5 (float) instead.",
        ),
        (
            {"pretrain": {"persistent": 1}},
            "The 'pretrain.persistent' parameter of the recipe must be true or false. Got 1 (int) instead.",
        ),
        (
            {"pretrain": {"learning_rate": 0}},
            "The 'pretrain.learning_rate' parameter of the recipe must be a float in the range (0, inf). Got 0 instead.",
        ),
        (
            {"finetune": {"dropout_hidden": 1.0}},
            "The 'finetune.dropout_hidden' parameter of the recipe must be a float in the range [0, 1). Got 1.0 instead.",
        ),
        (
            {"finetune": {"max_norm": 0}},
            "The 'finetune.max_norm' parameter of the recipe must be a float in the range (0, inf). Got 0 instead.",
        ),
        (
            {"finetune": {"optimizer": "rmsprop"}},
            "The 'finetune.optimizer' parameter of the recipe must be one of 'sgd', 'adam'. Got 'rmsprop' instead.",
        ),
        (
            {"model": {"hidden": 500}},
            "The 'model.hidden' parameter of the recipe must be a non-empty list of ints. Got 500 (int) instead.",
        ),
        (
            {"model": {"hidden": [500, 0]}},
            "The 'model.hidden[1]' parameter of the recipe must be an int in the range [1, inf). Got 0 instead.",
        ),
        ({"model": "rbm"}, "The 'model' parameter of the recipe must be a table [model]. Got 'rbm' instead."),
        (
            {"device": "gpu"},
            "The 'device' parameter of the recipe must be one of 'auto', 'cpu', 'cuda' or 'cuda:N'. Got 'gpu'",
        ),
        ({"precision": "fp16"}, "The 'precision' parameter of the recipe must be one of"),
        (
            {"data": {"max_memory": "lots"}},
            "The 'data.max_memory' parameter of the recipe must be a size such as '600M'",
        ),
        (
            {"data": {"source": "npz"}},
            "The 'data.train' parameter of the recipe must be the path of the training data when data.source = 'npz'",
        ),
        (
            {"data": {"train": "a.npz"}},
            "The 'data.train' parameter of the recipe is only used with data.source = 'files'",
        ),
        (
            {"pretrain": {"sparsity_cost": 0.1}},
            "The 'pretrain.sparsity_cost' parameter of the recipe is set but 'pretrain.sparsity_target' is not",
        ),
        (
            {"model": {"unit": "autoencoder", "visible": "gaussian"}},
            "must be 'bernoulli' for model.unit = 'autoencoder'. Got 'gaussian' instead.",
        ),
    ],
)
def test_bad_config_names_the_key(d, message):
    with pytest.raises(ValueError) as e:
        config.from_dict(d)
    assert message in str(e.value)


def test_none_turns_max_norm_off():
    assert config.from_dict({"finetune": {"max_norm": "none"}}).finetune.max_norm is None
    assert config.from_dict({"finetune": {"max_norm": 4}}).finetune.max_norm == 4


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
        30,
        1,
        0.1,
        0.5,
        0.9,
        2e-4,
        100,
    )
    # its fp32 twin, for CPUs without bfloat16 instructions, differs in the precision only
    fp32 = config.load(Path(__file__).parent.parent / "recipes" / "hinton-mnist-fp32.toml")
    assert (cfg.precision, fp32.precision) == ("bf16", "fp32")
    fp32.precision, fp32.name = cfg.precision, cfg.name
    assert fp32 == cfg


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
