"""Config trees: plain YAML round trip, overrides, the method registry."""

import dataclasses
import warnings
from pathlib import Path

import pytest
import yaml

from recon.config import discover_methods, get_method, load_config, override, save_config
from recon.engine.trainer import TrainerConfig
from recon.errors import ConfigError


def test_registry_lists_builtin_methods():
    methods = discover_methods()
    assert "vanilla-nerf" in methods
    spec = methods["vanilla-nerf"]
    assert isinstance(spec.config, TrainerConfig) and spec.config.method_name == "vanilla-nerf"
    assert spec.description


def test_unknown_method_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        get_method("nope")


def test_broken_plugin_warns_and_is_skipped(monkeypatch):
    monkeypatch.setenv("RECON_METHODS", "broken=not_a_module_xyz:spec")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        methods = discover_methods()
    assert "broken" not in methods and "vanilla-nerf" in methods
    assert any("broken" in str(w.message) for w in caught)


def test_yaml_round_trip_is_plain_and_exact(tmp_path: Path):
    cfg = override(get_method("vanilla-nerf").config, max_num_iterations=123, data=tmp_path, **{"model.hidden_dim": 32})
    path = tmp_path / "config.yml"
    save_config(cfg, path)
    text = path.read_text()
    assert "!!python" not in text
    yaml.safe_load(text)  # plain YAML
    back = load_config(path)
    assert back == cfg
    assert isinstance(back.data, Path) and back.model.hidden_dim == 32 and back.model.skips == (4,)


def test_override_rejects_unknown_field():
    with pytest.raises(ConfigError):
        override(get_method("vanilla-nerf").config, **{"model.no_such_field": 1})


def test_override_does_not_touch_the_preset():
    base = get_method("vanilla-nerf").config
    changed = override(base, **{"optimizers.fields.lr": 1.0})
    assert changed.optimizers["fields"].lr == 1.0 and base.optimizers["fields"].lr != 1.0


@pytest.mark.parametrize("text,match", [("a: [", "not valid YAML"), ("- 1\n- 2\n", "not a recon config"), ("_type: os:system\n", "not a config dataclass")])
def test_bad_config_files(tmp_path: Path, text, match):
    p = tmp_path / "config.yml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match) as err:
        load_config(p)
    assert "config.yml" in str(err.value)


def test_every_config_field_is_documented():
    """Docstrings become --help: every field of every config in the vanilla-nerf tree has one."""
    import ast
    import inspect

    def documented(cls):
        src = inspect.getsource(cls)
        tree = ast.parse(src.lstrip() if src.startswith(" ") else src)
        body = tree.body[0].body
        names = set()
        for a, b in zip(body, body[1:]):
            if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant):
                names.add(a.target.id)
        return names

    def walk(obj, seen):
        if not dataclasses.is_dataclass(obj) or type(obj) in seen:
            return
        seen.add(type(obj))
        have = set().union(*(documented(c) for c in type(obj).__mro__ if dataclasses.is_dataclass(c) and c.__module__.split(".")[0] in ("recon", "data", "methods")))
        for f in dataclasses.fields(obj):
            assert f.name in have, f"{type(obj).__name__}.{f.name} has no docstring"
            value = getattr(obj, f.name)
            for v in value.values() if isinstance(value, dict) else [value]:
                walk(v, seen)

    walk(get_method("vanilla-nerf").config, set())
