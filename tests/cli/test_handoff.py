"""recon's ns-* commands beside nerfstudio: recon's methods and runs stay, the rest goes to nerfstudio.

nerfstudio is played by a fake distribution (a dist-info with nerfstudio's console-script names,
pointing at a tiny module that records how it was called) in a temporary site folder on sys.path.
"""

from __future__ import annotations

import json
import os
import sys
import tomllib
from pathlib import Path

import pytest

from data.process.cli import ns_entrypoint as ns_process_data
from recon.cli import eval as cli_eval, export as cli_export, render as cli_render, train as cli_train
from recon.cli.handoff import is_nerfstudio_config, nerfstudio_entry_point, option_value
from viewer import cli as cli_viewer

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = {"ns-train": "train", "ns-eval": "eval", "ns-export": "exporter", "ns-render": "render",
            "ns-viewer": "run_viewer", "ns-process-data": "process_data"}
NS_CONFIG = """!!python/object:nerfstudio.engine.trainer.TrainerConfig
_target: !!python/name:nerfstudio.engine.trainer.Trainer ''
method_name: nerfacto
output_dir: !!python/object/apply:pathlib.PosixPath
- outputs
"""


@pytest.fixture
def nerfstudio(tmp_path, monkeypatch):
    """A fake nerfstudio 1.1.5 on sys.path; yields the file where its commands record their calls."""
    site = tmp_path / "site"
    info = site / "nerfstudio-1.1.5.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: nerfstudio\nVersion: 1.1.5\n")
    scripts = "\n".join(f"{cmd} = fake_ns_scripts:{fn}" for cmd, fn in COMMANDS.items())
    (info / "entry_points.txt").write_text(f"[console_scripts]\n{scripts}\nns-broken = fake_ns_scripts_missing:main\n")
    record = tmp_path / "calls.jsonl"
    functions = "\n".join(f"def {fn}():\n    return _record({cmd!r})\n" for cmd, fn in COMMANDS.items())
    (site / "fake_ns_scripts.py").write_text(
        "import json, os, sys\n"
        "def _record(name):\n"
        "    with open(os.environ['FAKE_NS_RECORD'], 'a') as f:\n"
        "        f.write(json.dumps({'entry': name, 'argv': sys.argv}) + '\\n')\n"
        "    if '--fail' in sys.argv:\n"
        "        raise SystemExit(3)\n"
        + functions
    )
    monkeypatch.setenv("FAKE_NS_RECORD", str(record))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "fake_ns_scripts", raising=False)
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # hand_over rewrites it
    yield record
    sys.modules.pop("fake_ns_scripts", None)


def calls(record: Path) -> list[dict]:
    return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []


def run_entry(entry, monkeypatch, *argv: str) -> int:
    monkeypatch.setattr(sys, "argv", [f"ns-x", *argv])
    with pytest.raises(SystemExit) as exc:
        entry()
    return exc.value.code


def one_line_error(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_fake_nerfstudio_is_found_without_importing_it(nerfstudio):
    ep = nerfstudio_entry_point("ns-train")
    assert ep is not None and ep.value == "fake_ns_scripts:train"
    assert "fake_ns_scripts" not in sys.modules
    assert nerfstudio_entry_point("ns-nothing") is None


def test_recon_methods_stay_with_recon(nerfstudio, monkeypatch, capsys):
    # vanilla-nerf is a name both define: recon keeps it; the bad flag gets recon's own one-line error
    assert run_entry(cli_train.ns_entrypoint, monkeypatch, "vanilla-nerf", "--no-such-flag") == 2
    assert "ns-train vanilla-nerf --help" in one_line_error(capsys)
    assert calls(nerfstudio) == []


def test_other_methods_go_to_nerfstudio_with_argv_unchanged(nerfstudio, monkeypatch):
    argv = ["nerfacto", "--data", "scene", "--machine.device-type", "cpu"]
    assert run_entry(cli_train.ns_entrypoint, monkeypatch, *argv) == 0
    assert calls(nerfstudio) == [{"entry": "ns-train", "argv": ["ns-train", *argv]}]
    assert run_entry(cli_train.ns_entrypoint, monkeypatch, "splatfacto", "--fail") == 3  # nerfstudio's exit status


def test_without_nerfstudio_an_unknown_method_is_recons_one_line_error(monkeypatch, capsys):
    assert nerfstudio_entry_point("ns-train") is None  # the test environment has no nerfstudio
    assert run_entry(cli_train.ns_entrypoint, monkeypatch, "nerfacto") == 2
    assert "unknown method 'nerfacto'" in one_line_error(capsys)


def test_help_says_what_is_handed_over(nerfstudio, monkeypatch, capsys):
    assert run_entry(cli_train.ns_entrypoint, monkeypatch, "--help") == 0
    out = capsys.readouterr().out
    assert "nerf-hash-small" in out and "nerfstudio 1.1.5 is installed too" in out
    assert calls(nerfstudio) == []


def test_help_without_nerfstudio_does_not_mention_it(monkeypatch, capsys):
    assert run_entry(cli_train.ns_entrypoint, monkeypatch, "--help") == 0
    assert "is installed too" not in capsys.readouterr().out


@pytest.mark.parametrize("command, entry, argv", [
    ("ns-eval", cli_eval.ns_entrypoint, ["--load-config", "CFG", "--output-path", "out.json"]),
    ("ns-export", cli_export.ns_entrypoint, ["poisson", "--load-config=CFG", "--output-dir", "exports"]),
    ("ns-render", cli_render.ns_entrypoint, ["spiral", "--load-config", "CFG", "--output-path", "a.mp4"]),
    ("ns-viewer", cli_viewer.ns_entrypoint, ["--load-config", "CFG"]),
])
def test_a_nerfstudio_run_goes_to_nerfstudio(nerfstudio, monkeypatch, tmp_path, command, entry, argv):
    cfg = tmp_path / "run" / "config.yml"
    cfg.parent.mkdir()
    cfg.write_text(NS_CONFIG)
    argv = [a.replace("CFG", str(cfg)) for a in argv]
    assert run_entry(entry, monkeypatch, *argv) == 0
    assert calls(nerfstudio) == [{"entry": command, "argv": [command, *argv]}]


def test_a_recon_run_stays_with_recon(nerfstudio, monkeypatch, tmp_path, capsys):
    cfg = tmp_path / "config.yml"
    cfg.write_text("_type: recon.engine.trainer:TrainerConfig\nmethod_name: splat\nno_such_field: 1\n")
    assert not is_nerfstudio_config(cfg)
    assert run_entry(cli_eval.ns_entrypoint, monkeypatch, "--load-config", str(cfg)) == 2
    one_line_error(capsys)
    assert calls(nerfstudio) == []


def test_a_nerfstudio_run_without_nerfstudio_is_one_line(monkeypatch, tmp_path, capsys):
    cfg = tmp_path / "config.yml"
    cfg.write_text(NS_CONFIG)
    assert run_entry(cli_export.ns_entrypoint, monkeypatch, "poisson", "--load-config", str(cfg)) == 2
    assert "a nerfstudio run's config; nerfstudio is not installed" in one_line_error(capsys)


def test_process_data_kinds(nerfstudio, monkeypatch, capsys):
    assert run_entry(ns_process_data, monkeypatch, "polycam", "--data", "x.zip", "--output-dir", "o") == 0
    assert calls(nerfstudio)[-1]["argv"] == ["ns-process-data", "polycam", "--data", "x.zip", "--output-dir", "o"]
    assert run_entry(ns_process_data, monkeypatch, "images", "--no-such-flag") == 2  # recon's own kind
    one_line_error(capsys)
    assert len(calls(nerfstudio)) == 1


def test_a_broken_nerfstudio_is_one_line(nerfstudio, monkeypatch, capsys):
    from recon.cli.handoff import hand_over

    with pytest.raises(SystemExit) as exc:
        hand_over("ns-broken", ["x"])
    assert exc.value.code == 2
    assert "nerfstudio's fake_ns_scripts_missing:main failed to load (ModuleNotFoundError" in one_line_error(capsys)


def test_option_value_forms():
    assert option_value(["--load-config", "a", "--load-config=b"], "--load-config") == "b"
    assert option_value(["--load-config-x", "a"], "--load-config") is None
    assert option_value(["--load-config"], "--load-config") is None


def test_console_scripts_dispatch_and_recon_names_never_do():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for command in COMMANDS:
        assert scripts[command].endswith(":ns_entrypoint"), command
        recon_name = command.replace("ns-", "recon-")
        assert scripts[recon_name] == scripts[command].replace(":ns_entrypoint", ":entrypoint"), recon_name
