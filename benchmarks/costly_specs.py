"""What does one request cost the server at the limits of a spec? A real ``distillab serve`` on
loopback (SQLite) is sent specs that describe the largest structures a spec may hold -- and
some past them -- through ``POST /specs/validate`` and ``POST /jobs/yaml``; for each, the
answer, the wall time and the server process's CPU seconds (from /proc).

    .venv/bin/python benchmarks/costly_specs.py   # -> benchmarks/results/costly_specs.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from distillab.files import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "distillab.cli"]
PREFIX = "/api/v1/distillation"


def spec(student: str, args: dict, **extra) -> str:
    return yaml.safe_dump({"name": "costly", "data": {"dataset": "digits"}, "teacher": {"model": "mlp"},
                           "student": {"model": student, "model_args": args}, "strategy": {"name": "response"},
                           "training": {"epochs": 1, "seeds": [0]}, **extra})


CASES = {
    "resnet-200 (the deepest allowed)": spec("resnet", {"depth": 200, "width": 16}),
    "wrn-202-4 (the deepest allowed)": spec("wrn", {"depth": 202, "widen_factor": 4}),
    "mlp of 64 hidden layers (the most allowed)": spec("mlp", {"hidden": [256] * 64}),
    "cnn of 8 stages x 8 convolutions": spec("cnn", {"stages": [[16] * 8] * 8}),
    "mlp of 100,000 hidden layers (300 KB)": spec("mlp", {"hidden": [1] * 100_000}),
    "resnet 60,002 deep": spec("resnet", {"depth": 60002, "width": 1}),
    "a 1 MB description": spec("mlp", {"hidden": [16]}, description="x" * 1_000_000),
}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "costly_specs"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "DISTILLAB_DATA_DIR": f"{tmp}/data", "DISTILLAB_MAX_BODY_KB": "2048",
               "OMP_NUM_THREADS": "1"}
        key = subprocess.run([*CLI, "users", "add", "alice"], env=env, capture_output=True, text=True,
                             check=True).stdout.strip().splitlines()[-1]
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        server = subprocess.Popen([*CLI, "serve", "--port", str(port), "--log-level", "warning"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        rows = []
        try:
            for _ in range(300):
                try:
                    if httpx.get(url + "/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            client = httpx.Client(base_url=url + PREFIX, headers={"X-API-Key": key,
                                                                  "Content-Type": "application/yaml"}, timeout=600)
            client.post("/specs/validate", content=CASES["mlp of 64 hidden layers (the most allowed)"])  # warm up
            for name, text in CASES.items():
                for route in ("/specs/validate", "/jobs/yaml"):
                    before, started = cpu_seconds(server.pid), time.perf_counter()
                    response = client.post(route, content=text)
                    rows.append({"case": name, "route": route, "bytes": len(text), "status": response.status_code,
                                 "wall_s": time.perf_counter() - started,
                                 "server_cpu_s": cpu_seconds(server.pid) - before,
                                 "answer": response.text[:160]})
                    print(json.dumps(rows[-1]), flush=True)
                    if response.status_code == 201:
                        client.delete(f"/jobs/{response.json()['job_id']}")
        finally:
            server.terminate()
            server.wait(30)
    atomic_write_json(Path(args.out + ".json"), {"rows": rows})
    lines = ["| spec | route | bytes | status | wall s | server CPU s |", "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['case']} | {r['route']} | {r['bytes']:,} | {r['status']} | {r['wall_s']:.2f} | "
              f"{r['server_cpu_s']:.2f} |" for r in rows]
    atomic_write_text(Path(args.out + ".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
