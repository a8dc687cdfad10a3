"""The DCASE 2025 inference package: installed into a fresh virtual environment, it predicts with
asc-search unimportable, and gives the logits asc-search's own front-end and networks give."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from asc_search.architecture import ArchSpec, build_model
from asc_search.data.dataset import SCENES
from asc_search.errors import AscSearchError
from asc_search.features.logmel import FrontEndSettings
from asc_search.plugin_manager import build_plugin_manager
from asc_search.report.inference_package import package_names, write_inference_package
from conftest import noise, write_wav

PM = build_plugin_manager(load_entry_points=False)
SMALL = ArchSpec(base_channels=16, n_blocks=(1, 1, 1), strides={"b2": (2, 2), "b3": (2, 1)})

#: Run inside the fresh environment: asc_search cannot be imported there, whatever is on the path.
PREDICT = textwrap.dedent("""
    import importlib.abc, json, sys

    class NoAscSearch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "asc_search" or name.startswith("asc_search."):
                raise ImportError("asc_search is not available in this environment")
            return None

    sys.meta_path.insert(0, NoAscSearch())
    from Test_Lab_task1 import Test_Lab_task1_1 as submission

    files, devices = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    logits, classes = submission.predict(files, devices)
    model = submission.load_model()
    print(json.dumps({"logits": [row.tolist() for row in logits], "classes": classes,
                      "own": sorted(model.models),
                      "unknown": submission.get_model_for_device(model, "unknown")
                      is model.models["general"],
                      "asc_search_loaded": any(m.startswith("asc_search") for m in sys.modules)}))
""")


def test_labels_are_formed_as_dcase_forms_them() -> None:
    assert package_names("Schmid_CPJKU", 2) == ("Schmid_CPJKU_task1", "Schmid_CPJKU_task1_2")
    with pytest.raises(AscSearchError, match="Lastname_Institution"):
        package_names("my team")
    with pytest.raises(AscSearchError, match="1 to 4"):
        package_names("Schmid_CPJKU", 5)


@pytest.mark.slow
def test_the_package_predicts_in_a_fresh_environment_without_asc_search(tmp_path: Path) -> None:
    settings = FrontEndSettings()
    general, device_a = (build_model(SMALL, pm=PM, seed=seed).eval() for seed in (0, 1))
    clips = [write_wav(tmp_path / "clips" / "one.wav", noise(seed=1)),
             write_wav(tmp_path / "clips" / "two.wav", noise(seed=2, channels=2)),
             write_wav(tmp_path / "clips" / "three.wav", noise(seed=3, rate=48_000), rate=48_000)]
    devices = ["a", "s4", "unknown"]
    package = write_inference_package(
        tmp_path / "package", label="Test_Lab", models={"general": general, "a": device_a},
        front_end=settings, classes=list(SCENES), complexity={"general": {}, "a": {}})

    # asc-search's own path: its front-end, features at 16 bits as the cache keeps them.
    import soundfile as sf

    front_end = settings.build()
    expected = []
    for path, device in zip(clips, devices, strict=True):
        samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
        features = front_end(torch.from_numpy(samples.mean(axis=1)), rate).half().float()
        network = device_a if device == "a" else general
        with torch.no_grad():
            expected.append(network(features[None, None])[0].numpy())

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], check=True, capture_output=True, text=True).stdout
    # No network here: the fresh environment borrows torch & co. from this one, read-only.
    (Path(site.strip()) / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # Built with this environment's pip and setuptools, installed into the fresh one only.
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--no-index", "--target", site.strip(), str(package)],
                   check=True)
    result = subprocess.run([str(python), "-c", PREDICT, json.dumps([str(c) for c in clips]),
                             json.dumps(devices)], capture_output=True, text=True,
                            cwd=tmp_path)  # not the repository: nothing importable by accident
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout.splitlines()[-1])
    assert answer["classes"] == list(SCENES) and answer["own"] == ["a", "general"]
    assert answer["unknown"] and not answer["asc_search_loaded"]
    np.testing.assert_allclose(np.array(answer["logits"]), np.stack(expected), atol=1e-4)
