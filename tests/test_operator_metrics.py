"""Operators' metrics as pure computations: the step-time split from given timings (an injected
clock, no sleeping), tokens/s and MFU from a known peak, the peak chosen by device name and
precision, peak memory, and the plain log line. The real run's lines and tags are checked in
test_training_monitoring.py."""
import os
from pathlib import Path

import pytest
import torch

from megaseqpe.config import Config, ModelConfig, PositionConfig
from megaseqpe.model import build_gpt
from megaseqpe.training.flops import FlopCounter, peak_flops, peak_source, select_peak
from megaseqpe.training.metrics import GIB, StepResult, StepTimer, Throughput, log_line, memory_peaks


def test_step_timer_counts_only_the_waits_for_the_next_batch_as_data_time():
    ticks = iter([0.0, 10.0, 10.0, 10.3, 10.5, 10.6, 11.0])  # init, start, (wait 0.3), (wait 0.1), stop
    timer = StepTimer(clock=lambda: next(ticks))
    timer.start()
    batches = iter(["a", "b"])
    assert [timer.next(batches), timer.next(batches)] == ["a", "b"]
    seconds, waited = timer.stop()
    assert seconds == pytest.approx(1.0) and waited == pytest.approx(0.4)


@pytest.fixture(scope="module")
def flops():
    config = Config(model=ModelConfig(n_layer=2, n_head=4, d_model=64, vocab_size=100, max_seq_len=32),
                    position=PositionConfig(type="learned"))
    return FlopCounter(build_gpt(config), n_layer=2, d_model=64, seq_len=32)


def test_throughput_splits_step_time_and_gives_mfu_in_percent_of_a_known_peak(flops):
    throughput = Throughput(flops, peak=1e12, world_size=2)
    throughput.add(StepResult(tokens=1000, seconds=0.5, data_seconds=0.1))
    throughput.add(StepResult(tokens=1000, seconds=1.5, data_seconds=0.3))
    rates = throughput.rates()
    per_second = flops.per_token * 2000 / 2.0  # both ranks' FLOPs over the two steps' 2 s
    assert rates["train/tokens_per_second"] == pytest.approx(1000)
    assert rates["throughput(tps)"] == pytest.approx(500)
    assert rates["tflops"] == pytest.approx(per_second / 2 / 1e12)
    assert rates["mfu(%)"] == pytest.approx(100 * per_second / 2e12)
    assert rates["train/mfu"] == pytest.approx(rates["mfu(%)"] / 100)
    assert rates["time_metrics/end_to_end(s)"] == pytest.approx(1.0)
    assert rates["time_metrics/data_loading(s)"] == pytest.approx(0.2)
    assert rates["time_metrics/data_loading(%)"] == pytest.approx(20.0)


def test_no_mfu_without_a_peak_and_a_reset_starts_a_new_window(flops):
    throughput = Throughput(flops, peak=None, world_size=1)
    throughput.add(StepResult(tokens=500, seconds=4.0, data_seconds=3.0))
    throughput.reset()
    throughput.add(StepResult(tokens=100, seconds=1.0, data_seconds=0.0))
    rates = throughput.rates()
    assert "mfu(%)" not in rates and "train/mfu" not in rates
    assert rates["train/tokens_per_second"] == pytest.approx(100)
    assert rates["time_metrics/data_loading(%)"] == 0.0


@pytest.mark.parametrize("name,precision,peak,label", [
    ("NVIDIA H100 80GB HBM3", "bf16", 989e12, "H100 SXM bf16 dense, NVIDIA H100 datasheet"),
    ("NVIDIA H100 PCIe", "fp16", 756e12, "H100 PCIe fp16 dense"),
    ("NVIDIA H100 NVL", "bf16", 835e12, "H100 NVL bf16 dense"),
    ("NVIDIA H200", "tf32", 495e12, "H200 SXM tf32 dense, NVIDIA H200 datasheet"),
    ("NVIDIA H200", "fp32", 67e12, "H200 SXM fp32 dense"),
    ("NVIDIA A100-SXM4-80GB", "bf16", 312e12, "A100 bf16 dense"),
    ("NVIDIA A100 80GB PCIe", "tf32", 156e12, "A100 tf32 dense"),
    ("NVIDIA L40S", "bf16", 362e12, "L40S bf16 dense, NVIDIA L40S datasheet"),
    ("NVIDIA A10G", "fp16", 125e12, "A10G fp16 dense, NVIDIA A10 datasheet"),
])
def test_peak_is_chosen_by_device_name_and_precision(name, precision, peak, label):
    flops, note = select_peak(name, precision)
    assert flops == peak
    assert note.startswith(f"MFU peak: {peak / 1e12:g} TFLOP/s (") and label in note


@pytest.mark.parametrize("name", [None, "NVIDIA GeForce RTX 4090"])
def test_no_peak_for_an_unknown_device_says_so(name):
    assert select_peak(name, "bf16") == (None, f"MFU: no peak known for {name or 'cpu'}; not reported")


def test_this_machines_peak_and_its_source_agree():
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    peak, note = peak_flops(device, "bf16"), peak_source(device, "bf16")
    assert (peak is None) == note.startswith("MFU: no peak known")
    if device.type == "cpu":
        assert note == "MFU: no peak known for cpu; not reported"


def _resident_gib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / GIB


def test_peak_rss_counts_a_new_allocation():
    before = _resident_gib()
    block = torch.ones(64 * 2 ** 20)  # 256 MiB, written, so resident
    peaks = memory_peaks(torch.device("cpu"))
    assert set(peaks) == {"memory/max_rss(GiB)"}
    # The kernel folds the peak in lazily (a few pages behind), hence the 10 MiB of slack.
    assert peaks["memory/max_rss(GiB)"] >= before + 0.25 - 0.01
    assert peaks["memory/max_rss(GiB)"] <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / GIB
    del block


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_peaks_cover_an_allocation_and_restart_per_window():
    device = torch.device("cuda")
    block = torch.ones(2 ** 28, device=device)  # 1 GiB
    first = memory_peaks(device)
    assert first["memory/max_reserved(GiB)"] >= first["memory/max_active(GiB)"] >= 1.0
    del block
    assert memory_peaks(device)["memory/max_active(GiB)"] < 1.0


SCALARS = {"train/loss": 3.4123, "train/lr": 3e-4, "train/tokens_per_second": 12300.0, "throughput(tps)": 6100.0,
           "mfu(%)": 41.23, "time_metrics/end_to_end(s)": 0.53, "time_metrics/data_loading(%)": 2.2,
           "memory/max_active(GiB)": 12.1, "memory/max_reserved(GiB)": 14.04, "memory/max_rss(GiB)": 3.2}


def test_log_line_on_a_gpu_with_a_fresh_val_loss():
    assert log_line(120, 1000, SCALARS, (120, 3.5)) == (
        "step 120/1000 | loss 3.412 | val 3.500 (new) | lr 3.0e-04 | 12.3k tok/s (6.1k/dev) | mfu 41.2% | "
        "step 0.53s (data 2%) | mem 12.1/14.0 GiB | rss 3.2 GiB")


def test_log_line_on_cpu_names_the_step_of_an_older_val_loss():
    cpu = {k: v for k, v in SCALARS.items() if k not in ("mfu(%)", "memory/max_active(GiB)", "memory/max_reserved(GiB)")}
    cpu |= {"train/tokens_per_second": 850.0, "throughput(tps)": 425.0, "time_metrics/end_to_end(s)": 0.05123}
    assert log_line(130, 1000, cpu, (100, 3.5)) == (
        "step 130/1000 | loss 3.412 | val 3.500 (step 100) | lr 3.0e-04 | 850 tok/s (425/dev) | "
        "step 0.0512s (data 2%) | rss 3.2 GiB")
    assert "val" not in log_line(1, 1000, cpu, None)
