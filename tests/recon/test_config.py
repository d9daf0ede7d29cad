"""Config trees: plain YAML round trip, overrides, the method registry."""

import dataclasses
import sys
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


@pytest.mark.parametrize("text,match", [("a: [", "not valid YAML"), ("- 1\n- 2\n", "not a recon config"), ("_type: os:system\n", "outside recon's packages"), ("_type: recon.config:Path\n", "not a config dataclass")])
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


# -- config.yml is data, not code --------------------------------------------------------------
SIDE_EFFECT_MODULE = """
from dataclasses import dataclass
from pathlib import Path
Path({marker!r}).write_text("imported")

@dataclass
class Cfg:
    x: int = 1
"""


def _plain_config(tmp_path: Path) -> dict:
    cfg = override(get_method("vanilla-nerf").config, data=tmp_path)
    save_config(cfg, tmp_path / "good.yml")
    return yaml.safe_load((tmp_path / "good.yml").read_text())


@pytest.mark.parametrize("nested", [False, True])
def test_config_naming_another_module_is_refused_before_import(tmp_path: Path, monkeypatch, nested: bool):
    marker = tmp_path / "imported.txt"
    (tmp_path / "recon_fuzz_side_effect.py").write_text(SIDE_EFFECT_MODULE.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path))
    doc = {"_type": "recon_fuzz_side_effect:Cfg", "x": 2}
    if nested:  # a foreign class anywhere in the tree, not only at the top
        top = _plain_config(tmp_path)
        top["model"] = doc
        doc = top
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match="outside recon's packages and registered plugins") as err:
        load_config(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)
    assert not marker.exists() and "recon_fuzz_side_effect" not in sys.modules


@pytest.mark.parametrize("name", ["os:system", "subprocess:Popen", "builtins:eval", "recon..config:X", "recon.config:os.system", "recon/../x:Y", "", "recon.config"])
def test_config_names_that_are_not_recon_dataclasses(tmp_path: Path, name: str):
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump({"_type": name}))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_registered_plugin_configs_load_and_what_they_import_does_not(tmp_path: Path, monkeypatch):
    """A plugin registered through RECON_METHODS may name its own config classes; a foreign class
    reached through one of its modules (``plugin.m:Foreign``) is still refused."""
    pkg = tmp_path / "recon_fuzz_plugin"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "m.py").write_text("from dataclasses import dataclass\nfrom recon_fuzz_foreign import Foreign\n\n@dataclass\nclass Cfg:\n    x: int = 1\n")
    (tmp_path / "recon_fuzz_foreign.py").write_text("from dataclasses import dataclass\n\n@dataclass\nclass Foreign:\n    y: int = 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("RECON_METHODS", "fuzz=recon_fuzz_plugin.m:spec")
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump({"_type": "recon_fuzz_plugin.m:Cfg", "x": 5}))
    assert load_config(path).x == 5
    path.write_text(yaml.safe_dump({"_type": "recon_fuzz_plugin.m:Foreign"}))
    with pytest.raises(ConfigError, match="not a config dataclass of recon or a registered plugin"):
        load_config(path)
    monkeypatch.delenv("RECON_METHODS")
    path.write_text(yaml.safe_dump({"_type": "recon_fuzz_plugin.m:Cfg"}))
    with pytest.raises(ConfigError, match="outside recon's packages"):
        load_config(path)
