"""Recipes: every file loads; unknown keys and wrong types name the key and the file; --set is validated."""

from __future__ import annotations

import pytest

from sslbench.config import recipe_from_json, recipe_key
from sslbench.errors import UserError
from sslbench.recipes import list_recipes, load_recipe, recipes_dir


def _split(rel: str) -> tuple[str, str, str, str]:
    parts = rel.split("/")
    kind, name = ("protocol", parts[1]) if parts[0] == "protocols" else ("pretrain", parts[0])
    scale, _, flavour = parts[-1].partition("-")
    return kind, name, scale, flavour


@pytest.mark.parametrize("rel", list_recipes())
def test_every_recipe_file_loads_and_round_trips(rel: str) -> None:
    kind, name, scale, flavour = _split(rel)
    recipe = load_recipe(kind, name, scale, flavour=flavour)  # type: ignore[arg-type]
    again = recipe_from_json(recipe.to_json())
    assert again.to_dict() | {"source": ""} == recipe.to_dict() | {"source": ""}
    assert recipe_key(again) == recipe_key(recipe) == recipe_key(recipe.to_json())


def test_paper_recipes_cite_their_values() -> None:
    for path in recipes_dir().rglob("paper*.toml"):
        text = path.read_text()
        assert text.startswith("#") and any(w in text for w in ("paper", "released", "Table")), path


def test_unknown_key_names_key_and_file(tmp_path) -> None:
    bad = tmp_path / "r.toml"
    bad.write_text('[backbone]\nname = "nin"\n[optim]\nlearning_rate = 0.1\n')
    with pytest.raises(UserError, match=r"r\.toml \[optim\].*'learning_rate'"):
        load_recipe("pretrain", "rotation", path=bad)


def test_wrong_type_names_key_and_file(tmp_path) -> None:
    bad = tmp_path / "r.toml"
    bad.write_text('[backbone]\nname = "nin"\n[schedule]\nepochs = "ten"\n')
    with pytest.raises(UserError, match=r"r\.toml \[schedule\].*epochs"):
        load_recipe("pretrain", "rotation", path=bad)


def test_unknown_top_level_section(tmp_path) -> None:
    bad = tmp_path / "r.toml"
    bad.write_text('[backbone]\nname = "nin"\n[optimiser]\nlr = 1\n')
    with pytest.raises(UserError, match="unknown key 'optimiser'"):
        load_recipe("pretrain", "rotation", path=bad)


def test_set_goes_through_the_same_validation() -> None:
    r = load_recipe("pretrain", "rotation", overrides=["optim.lr=0.5", "crop_pad=0", "backbone.blocks=3"])
    assert r.optim.lr == 0.5 and r.component.cfg.crop_pad == 0 and r.backbone.cfg.blocks == 3
    with pytest.raises(UserError, match="with --set optim.lr=fast"):
        load_recipe("pretrain", "rotation", overrides=["optim.lr=fast"])
    with pytest.raises(UserError, match="'nope'"):
        load_recipe("pretrain", "rotation", overrides=["optim.nope=1"])
    with pytest.raises(UserError, match="key=value"):
        load_recipe("pretrain", "rotation", overrides=["optim.lr"])


def test_unknown_scale_and_flavour_list_what_exists() -> None:
    with pytest.raises(UserError, match="unknown scale 'huge'"):
        load_recipe("pretrain", "rotation", scale="huge")
    with pytest.raises(UserError, match="available recipes: mini, mini-alexnet"):
        load_recipe("pretrain", "rotation", flavour="resnet")


def test_recipe_key_ignores_where_the_recipe_came_from() -> None:
    a = load_recipe("pretrain", "rotation")
    b = load_recipe("pretrain", "rotation", overrides=["data.workers=3"])
    c = load_recipe("pretrain", "rotation", overrides=["optim.lr=0.2"])
    assert recipe_key(a) == recipe_key(b) != recipe_key(c)


def test_a_recipe_stored_before_a_field_was_added_is_the_same_experiment_at_its_default() -> None:
    import json

    from sslbench.config import LATE_DEFAULTS, recipe_diff, recipe_key
    from sslbench.recipes import load_recipe

    recipe = load_recipe("pretrain", "rotation", "mini", flavour="alexnet")
    old = json.loads(recipe.to_json())
    for section, key, _ in LATE_DEFAULTS:
        old.get(section, {}).pop(key, None)
    stored = json.dumps(old)
    assert recipe_key(stored) == recipe_key(recipe) and recipe_diff(stored, recipe) == []
    other = load_recipe("pretrain", "rotation", "mini", ["backbone.pool_pad=1"], flavour="alexnet")
    assert recipe_key(other) != recipe_key(recipe)
    assert [k for k, _, _ in recipe_diff(stored, other)] == ["backbone.pool_pad"]


@pytest.mark.parametrize(("name", "flavour"), [("linear", ""), ("voc-det", ""), ("nyu-depth", "")])
def test_a_protocol_recipe_stored_before_the_eval_lasso_is_the_same_experiment(name: str, flavour: str) -> None:
    import json

    from sslbench.config import recipe_diff, recipe_key
    from sslbench.recipes import load_recipe

    recipe = load_recipe("protocol", name, "mini", flavour=flavour)
    old = json.loads(recipe.to_json())
    del old["protocol"]["lasso"]
    assert recipe_key(json.dumps(old)) == recipe_key(recipe) and recipe_diff(json.dumps(old), recipe) == []
    lasso = load_recipe("protocol", name, "mini", ["protocol.lasso.enabled=true"], flavour=flavour)
    assert recipe_key(lasso) != recipe_key(recipe)


def test_a_difference_names_sub_tasks_by_name_and_cuts_long_values() -> None:
    from sslbench.config import describe_diff

    tasks = [{"name": "context", "cfg": {"gap": 8}}, {"name": "colorization", "cfg": {}}]
    assert describe_diff([("task.tasks", tasks, tasks[:1])]) == "task.tasks=[context] (not [context, colorization])"
    long = describe_diff([("data.root", "x" * 100, "y")])
    assert long.startswith('data.root="y" (not "xxx') and long.endswith('...)') and len(long) < 90
