"""Per-step overhead of the KFP local runner (SubprocessRunner, use_venv=False).

Runs a chain of N no-op components that pass an artifact along, as our steps do, and
prints JSON: wall time per repeat and the per-step overhead; then the same with each
step importing one of our step modules (TensorFlow, Keras, MLflow), which is what a
real step pays before doing any work.
Usage: python bench/local_runner_overhead.py [--steps 6] [--repeats 2]
"""

import argparse
import json
import tempfile
import time

from kfp import dsl, local


@dsl.component(install_kfp_package=False)
def passthrough(previous: dsl.Input[dsl.Dataset], out: dsl.Output[dsl.Dataset]):
    with open(out.path, "w") as f:
        f.write(open(previous.path).read() + ".")


@dsl.component(install_kfp_package=False)
def start(out: dsl.Output[dsl.Dataset]):
    with open(out.path, "w") as f:
        f.write("x")


@dsl.component(install_kfp_package=False)
def passthrough_importing_step(previous: dsl.Input[dsl.Dataset], out: dsl.Output[dsl.Dataset]):
    import components.training.train  # noqa: F401  (TensorFlow, Keras, MLflow: what a real step imports)

    with open(out.path, "w") as f:
        f.write(open(previous.path).read() + ".")


def chain(steps: int, step_component=passthrough):
    @dsl.pipeline(name="overhead")
    def overhead_pipeline():
        task = start()
        for _ in range(steps - 1):
            task = step_component(previous=task.outputs["out"])

    return overhead_pipeline


def time_runs(pipeline_func, repeats: int) -> list[float]:
    timings = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        pipeline_func()
        timings.append(time.perf_counter() - t0)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=root, raise_on_error=True)
        bare = time_runs(chain(args.steps), args.repeats)
        importing = time_runs(chain(args.steps, passthrough_importing_step), args.repeats)
    print(
        json.dumps(
            {
                "runner": "kfp.local.SubprocessRunner(use_venv=False)",
                "steps": args.steps,
                "bare_wall_s": [round(t, 3) for t in bare],
                "per_step_overhead_s": round(min(bare) / args.steps, 3),
                "importing_wall_s": [round(t, 3) for t in importing],
                "per_step_overhead_with_imports_s": round(min(importing) / args.steps, 3),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
