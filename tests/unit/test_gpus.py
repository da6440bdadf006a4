"""One trial per GPU (sgdtune/gpus.py): which GPU each worker sees, tested with lists of devices
(this machine has none), and the one-line refusals where there is no CUDA."""

import multiprocessing

import pytest
from conftest import run_cli

from sgdtune.errors import InputError
from sgdtune.gpus import gpu_label, parse_gpus, use_gpu, visible_gpus, worker_gpus


@pytest.mark.parametrize("env, count, expected", [
    ({}, 4, ["0", "1", "2", "3"]),                                   # unset: the machine's own indices
    ({"CUDA_VISIBLE_DEVICES": "3,5"}, 2, ["3", "5"]),                # a scheduler gave this job GPUs 3 and 5
    ({"CUDA_VISIBLE_DEVICES": "GPU-aa,GPU-bb"}, 2, ["GPU-aa", "GPU-bb"]),  # UUIDs stay UUIDs
    ({"CUDA_VISIBLE_DEVICES": "1,2,7"}, 2, ["1", "2"]),              # an entry CUDA could not open is dropped
])
def test_the_visible_gpus_are_named_as_cuda_visible_devices_would_name_them(env, count, expected):
    assert visible_gpus(count, env) == expected


@pytest.mark.parametrize("workers, visible, chosen, expected", [
    (4, ["0", "1", "2", "3"], None, ["0", "1", "2", "3"]),      # one worker per GPU
    (5, ["0", "1", "2", "3"], [0, 2, 3], ["0", "2", "3", "0", "2"]),  # --gpus 0,2,3, slots taken in turn
    (4, ["0", "1"], [0, 0, 1, 1], ["0", "0", "1", "1"]),        # two trials at once on each GPU
    (3, ["0", "1"], None, ["0", "1", "0"]),                     # more workers than GPUs: in turn
    (2, ["3", "5"], [1], ["5", "5"]),                           # indices are among the visible GPUs
    (1, ["GPU-aa", "GPU-bb"], [1], ["GPU-bb"]),
])
def test_each_worker_gets_one_gpu_from_the_chosen_slots_in_turn(workers, visible, chosen, expected):
    assert worker_gpus(workers, visible, chosen) == expected


def test_a_gpu_index_past_the_visible_ones_is_refused_naming_how_many_there_are():
    with pytest.raises(InputError, match=r"--gpus: must name GPUs 0-1 \(this process sees 2: 0,1\); got 0,2"):
        worker_gpus(2, ["0", "1"], [0, 2])


def test_no_visible_gpu_is_refused():
    with pytest.raises(InputError, match="--gpus: needs a CUDA device"):
        worker_gpus(2, [], None)


@pytest.mark.parametrize("text, expected", [("0,2,3", [0, 2, 3]), ("1", [1]), (" 0, 0 ,1", [0, 0, 1])])
def test_gpu_lists_parse(text, expected):
    assert parse_gpus(text) == expected


@pytest.mark.parametrize("text", ["", "a,b", "0,-1", "0;1", "0,,1"])
def test_a_malformed_gpu_list_is_refused_with_an_example(text):
    with pytest.raises(InputError, match=r"--gpus: must be a comma-separated list of GPU indices such as 0,2,3"):
        parse_gpus(text)


def _child_sees(name: str, out) -> None:
    use_gpu(name)
    out.put((__import__("os").environ["CUDA_VISIBLE_DEVICES"], gpu_label()))


def test_a_worker_process_sees_only_the_gpu_it_was_given_and_labels_its_device_with_it():
    context = multiprocessing.get_context("spawn")  # as workers.supervise starts them
    out = context.Queue()
    child = context.Process(target=_child_sees, args=("2", out))
    child.start()
    seen = out.get(timeout=120)
    child.join(60)
    assert seen == ("2", "GPU 2")


def test_a_process_given_several_gpus_has_no_single_gpu_label(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert gpu_label() == ""


@pytest.mark.parametrize("flags, message", [
    (["--gpus", "0"], "error: --gpus: needs CUDA; this machine has none"),
    (["--gpus", "0", "--device", "cpu"], "error: --gpus: needs --device cuda"),
    (["--gpus", "zero"], "error: --gpus: must be a comma-separated list"),
    (["--device", "cuda", "--workers", "2"], "error: device: must be one of 'auto', 'cpu' on this machine (no CUDA)"),
])
def test_asking_for_gpus_without_cuda_is_one_line_and_exit_2(workdir, flags, message):
    out = run_cli("sgdtune.study", "experiments/quick.toml", "--no-tracking", *flags, cwd=workdir)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith(message) and out.stderr.count("\n") == 1, out.stderr
    assert not (workdir / "mlruns").exists()  # refused before anything was written


def test_on_a_cpu_a_trial_has_no_gpu_metrics_and_no_error():
    import torch
    from toy import cfg, make_data

    from sgdtune.timing import GpuMonitor
    from sgdtune.trainer import train

    summary = train(cfg(epochs=2), make_data()).summary()
    assert not {"gpu_time_s", "gpu_util_mean_pct", "gpu_mem_used_max_mb"} & set(summary)
    monitor = GpuMonitor(torch.device("cpu"))
    monitor.start()
    monitor.stop()
    assert monitor._thread is None and monitor.summary() == {}


def test_the_gpu_monitor_samples_the_physical_gpu_a_worker_was_given(monkeypatch):
    """NVML counts every GPU of the machine: a worker given CUDA_VISIBLE_DEVICES=3 sees it as
    cuda:0 and must read GPU 3. A stand-in for the NVML library (none on this machine)."""
    import threading
    import types

    import torch

    from sgdtune.timing import GpuMonitor

    opened, sampled = [], threading.Event()

    def utilization(handle):
        sampled.set()
        return types.SimpleNamespace(gpu=40.0 + handle)

    nvml = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetHandleByIndex=lambda i: opened.append(i) or i,
        nvmlDeviceGetUtilizationRates=utilization,
        nvmlDeviceGetMemoryInfo=lambda handle: types.SimpleNamespace(used=512 * 2**20),
    )
    monkeypatch.setitem(__import__("sys").modules, "pynvml", nvml)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    monitor = GpuMonitor(torch.device("cuda", 0))
    monitor.start()
    assert sampled.wait(10)
    monitor.stop()
    assert opened == [3]
    assert monitor.summary() == {"gpu_util_mean_pct": 43.0, "gpu_mem_used_max_mb": 512.0}
