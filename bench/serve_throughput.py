"""Serving throughput: images/s through the local model server (`lesionpipe serve`, MLflow's
server of the image-taking model, POST /invocations with base64 JPEGs, one client sending
requests of --request-images images) against `lesionpipe predict`'s path (predict_files, in
process, no start-up), on the same JPEGs and machine, with and without test-time
augmentation. Prints one JSON object.

    python bench/serve_throughput.py [--model mobilenet_v2 --alpha 0.35 --size 128] [--images 128]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]


def fresh_model_folder(folder: Path, name: str, alpha: float, size: int) -> None:
    """An untrained model as a train output folder (its speed is what is measured)."""
    from components.core import filenames
    from components.data import synthetic
    from components.training.models import build_model

    folder.mkdir(parents=True)
    build_model(name, 4, size, [128.0] * 3, [64.0] * 3, alpha=alpha).save(folder / filenames.MODEL)
    (folder / filenames.CLASSES).write_text(json.dumps(list(synthetic.CLASSES)))
    (folder / filenames.MODEL_INFO).write_text(json.dumps({"image_size": size, "resize_mode": "pad"}))


def post(url: str, jpegs: list[bytes], tta: bool) -> list[dict]:
    body = {
        "dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(j).decode()] for j in jpegs]},
        "params": {"tta": tta},
    }
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())["predictions"]


def served_rate(url: str, jpegs: list[bytes], per_request: int, tta: bool) -> float:
    post(url, jpegs[:per_request], tta)  # warm up (traces the model)
    started = time.perf_counter()
    for start in range(0, len(jpegs), per_request):
        answers = post(url, jpegs[start : start + per_request], tta)
        assert all(not a["error"] for a in answers), answers[0]
    return len(jpegs) / (time.perf_counter() - started)


def wait_for(url: str, server: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise SystemExit(f"{url} did not answer within {timeout} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--alpha", type=float, default=0.35)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--request-images", type=int, default=16)
    parser.add_argument("--port", type=int, default=8391)
    args = parser.parse_args()

    from components.core.tracking import pipeline_run
    from components.data import synthetic
    from components.evaluation.predict import find_images, predict_files
    from components.scoring.inference import load_model
    from components.training.trained_model import log_trained_model

    with tempfile.TemporaryDirectory() as tmp:
        store = f"sqlite:///{Path(tmp, 'mlflow.db')}"
        fresh_model_folder(Path(tmp, "model"), args.model, args.alpha, args.size)
        model_uri = log_trained_model(Path(tmp, "model"), store, pipeline_run(store, "bench", "serve", "serve", {}))
        for i in range(args.images):
            synthetic.render(synthetic.CLASSES[i % 4], i, 200, 1).convert("RGB").resize((200, 150)).save(
                Path(tmp, f"{i:04d}.jpg"), quality=90
            )
        files = find_images([tmp])
        jpegs = [Path(f).read_bytes() for f in files]
        loaded = load_model(model_uri, store)
        predict = {}
        for tta in (False, True):
            predict_files(loaded, files[: args.request_images], tta=tta)  # warm up
            started = time.perf_counter()
            predict_files(loaded, files, tta=tta)
            predict["tta" if tta else "plain"] = round(len(files) / (time.perf_counter() - started), 1)
        command = [sys.executable, "-m", "pipeline.cli", "serve", "--model", model_uri, "--port", str(args.port)]
        server = subprocess.Popen(command + ["--tracking-uri", store], cwd=ROOT, stdout=subprocess.DEVNULL)
        try:
            wait_for(f"http://127.0.0.1:{args.port}/health", server)
            url = f"http://127.0.0.1:{args.port}/invocations"
            served = {
                "plain": round(served_rate(url, jpegs, args.request_images, False), 1),
                "tta": round(served_rate(url, jpegs, args.request_images, True), 1),
            }
        finally:
            server.terminate()
            server.wait(60)
    print(
        json.dumps(
            {
                "model": f"{args.model} alpha {args.alpha} at {args.size} px (untrained)",
                "images": args.images,
                "jpeg": "200x150",
                "request_images": args.request_images,
                "server_workers": 1,
                "cpus": os.cpu_count(),
                "predict_images_per_s": predict,
                "served_images_per_s": served,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
