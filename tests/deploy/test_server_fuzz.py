"""Schemathesis against the other servers we ship, on loopback: ``serve-model`` (a package,
with an API key) and ``serve-teacher``. Generated requests, valid and invalid, for every
operation: no 5xx, no undocumented status, every error a JSON body."""

from __future__ import annotations

import json
import sys

import pytest
from fuzzing import fuzz, log_counts
from schemathesis import GenerationMode

from conftest import finished_cnn_run, tiny_spec
from distillab.deploy.package import package_run
from test_package_server import server

def _npy_bodies():
    """Bodies for serve-teacher's application/x-npy: arrays of assorted shapes, dtypes and values
    (NaN and infinities among them), and raw bytes."""
    import numpy as np
    import schemathesis
    from hypothesis import strategies as st

    from distillab.models.remote import npy_bytes

    arrays = st.builds(lambda shape, dtype, fill: npy_bytes(np.full(shape, fill).astype(dtype)),
                       st.lists(st.integers(0, 9), min_size=0, max_size=4).map(tuple),
                       st.sampled_from(["float32", "float64", "int8"]),
                       st.floats(width=32, allow_nan=True, allow_infinity=True))
    schemathesis.openapi.media_type("application/x-npy", st.one_of(arrays, st.binary(max_size=600)))


_npy_bodies()
MODES = pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])


@pytest.fixture(scope="module")
def model_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz-package")
    package_run(finished_cnn_run(tmp, seeds=(0,), epochs=1), tmp / "pkg")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FUZZ_KEY", "fuzz-key")
        with server([sys.executable, str(tmp / "pkg" / "serve.py"), str(tmp / "pkg"), "--api-key-env", "FUZZ_KEY"],
                    tmp) as url:
            yield url


@pytest.fixture(scope="module")
def teacher_server(tmp_path_factory):
    from conftest import blobs_teacher, make_blobs_npz

    tmp = tmp_path_factory.mktemp("fuzz-teacher")
    spec = tiny_spec(make_blobs_npz(tmp / "blobs.npz"), blobs_teacher(tmp / "teacher.safetensors"))
    (tmp / "spec.json").write_text(json.dumps(spec))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DISTILLAB_TEACHER_KEY", "fuzz-key")
        with server([sys.executable, "-m", "distillab.cli", "serve-teacher", str(tmp / "spec.json"), "--k", "2"], tmp) as url:
            yield url


@MODES
def test_serve_model_answers_within_its_documented_contract(model_server, mode):
    checked, statuses = fuzz(model_server, mode, "Authorization", "Bearer fuzz-key")
    assert "POST /predict" in checked or mode is GenerationMode.NEGATIVE, checked
    assert not any(status >= 500 for status in statuses), statuses
    log_counts("serve-model", mode, checked, statuses)


@MODES
def test_serve_teacher_answers_within_its_documented_contract(teacher_server, mode):
    checked, statuses = fuzz(teacher_server, mode, "Authorization", "Bearer fuzz-key")
    assert not any(status >= 500 for status in statuses), statuses
    log_counts("serve-teacher", mode, checked, statuses)
