"""Two processes that need the same not-yet-trained teacher: one trains it, the other waits
and reuses it, and both report the checksum of the file that stays."""

import json
import os
import subprocess
import sys

from conftest import tiny_spec

SCRIPT = """
import json, logging, sys, torch
torch.set_num_threads(1)
logging.basicConfig(level=logging.INFO)
from distillab import data
from distillab.experiment.teacher import get_teachers
from distillab.models.loading import file_checksum
from distillab.spec_io import parse_spec
spec = parse_spec(json.loads(sys.argv[1]))
teachers = get_teachers(spec, data.build(spec.data, 0))
_, checksum, facts = teachers[0]
path = facts["source"].split("cached at ", 1)[1]
print(json.dumps({"checksum": checksum, "path": path, "on_disk": file_checksum(__import__("pathlib").Path(path))}))
"""


def test_concurrent_jobs_share_one_trained_teacher(blobs, tmp_path):
    spec = tiny_spec(blobs, tmp_path / "unused", teacher={"model": "cnn_tiny", "checkpoint": None,
                                                          "training": {"epochs": 3, "batch_size": 32, "seeds": [0]}})
    spec["cache"] = {"dir": str(tmp_path / "cache")}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = [subprocess.Popen([sys.executable, "-c", SCRIPT, json.dumps(spec)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    results, trainings = [], 0
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
        trainings += err.count("teacher[0]: test accuracy")
    assert trainings == 1  # the second process waited for the first and loaded its teacher
    assert results[0]["path"] == results[1]["path"]
    for result in results:  # each report's checksum is the file that stayed at its recorded path
        assert result["checksum"] == result["on_disk"]
    trained = list((tmp_path / "cache" / "teachers").glob("*/teacher.safetensors"))
    assert len(trained) == 1
