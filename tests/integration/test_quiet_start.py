"""A worker's scorer starts quietly on a machine without a GPU: TensorFlow is imported only when
a model loads, and its CUDA probing lines stay out of stderr (models/serving/local.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from models.serving import local
from tests.support.helpers import REPO

NOISE = ("cuInit", "cuda", "CUDA", "oneDNN", "absl::InitializeLog", "cpu_feature_guard")


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL",)}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=REPO,
        env={**base, **env},
    )


def test_no_model_no_tensorflow() -> None:
    done = _python(
        """
        import sys
        from models.serving import open_scorer
        scorer = open_scorer("local", None)
        assert scorer.model_version is None
        scorer.close()
        assert "tensorflow" not in sys.modules, "TensorFlow imported without a model"
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


@pytest.mark.slow
def test_a_model_loads_without_cuda_probing_lines(tmp_path: Path) -> None:
    if local.gpu_configured():
        pytest.skip("a GPU is configured here: TensorFlow's device lines are kept on purpose")
    from models.training.export import export_version
    from tests.support.models import toy_artifacts

    export_version(toy_artifacts(seed=0), tmp_path)
    done = _python(
        f"""
        import logging, sys
        logging.basicConfig(level=logging.INFO)
        from models.serving import LocalScorer
        scorer = LocalScorer({str(tmp_path)!r}, watch=False)
        assert scorer.model_version is not None and scorer.device == "/CPU:0"
        print("loaded", file=sys.stderr)
        """
    )
    assert done.returncode == 0, done.stderr
    assert "loaded" in done.stderr and "local scorer runs on /CPU:0" in done.stderr
    noisy = [line for line in done.stderr.splitlines() if any(n in line for n in NOISE)]
    assert not noisy, "\n".join(noisy)


def test_the_filter_keeps_every_other_line(capfd: pytest.CaptureFixture[bytes]) -> None:
    with local._stderr_without(local._STARTUP_NOISE):
        os.write(2, b"I0000 00:00:1.0 1 port.cc:153] oneDNN custom operations are on.\n")
        os.write(2, b"E0000 00:00:1.0 1 cuda_platform.cc:52] failed call to cuInit: INTERNAL\n")
        os.write(2, b"W0000 00:00:1.0 1 something.cc:1] a real warning\n")
        os.write(2, b"Traceback (most recent call last): a real error\n")
    err = capfd.readouterr().err
    assert err.splitlines() == [
        "W0000 00:00:1.0 1 something.cc:1] a real warning",
        "Traceback (most recent call last): a real error",
    ]


def test_cuda_visible_devices_naming_a_device_counts_as_a_configured_gpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert local.gpu_configured()
