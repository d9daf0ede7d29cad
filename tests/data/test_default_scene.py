"""`ns-train <method>` without --data trains on the built-in synthetic scene, generated once."""

from data.parsers import AutoParserConfig


def test_no_data_means_the_cached_synthetic_scene(tmp_path, monkeypatch):
    monkeypatch.setenv("RECON_CACHE_DIR", str(tmp_path))
    outputs = AutoParserConfig().load(None)
    assert len(outputs.splits["train"]) == 32 and len(outputs.splits["test"]) == 8
    assert outputs.metadata.get("ground_truth_mesh") and outputs.instance_filenames and outputs.depth_filenames
    scene_dirs = list((tmp_path / "synthetic").iterdir())
    assert len(scene_dirs) == 1
    stamp = (scene_dirs[0] / "transforms.json").stat().st_mtime_ns
    AutoParserConfig().load(None)  # second use: the cached scene, not a new one
    assert (scene_dirs[0] / "transforms.json").stat().st_mtime_ns == stamp
