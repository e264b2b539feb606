"""profile_model(..., timing=N): measured time beside the MACs, per module and operator.

The machine running these tests is shared and noisy: every check on time is a ratio with a wide margin (shares of
one forward, one time against another), never an absolute time.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import random

import pytest
import torch
from torch import nn

import lightning_flops as lf
from lightning_flops.errors import FlopsConfigError, ReportFormatError
from lightning_flops.report import OpTime, TimingReport

SORT_ROWS, SORT_COLS = 64, 16384  # 1M elements to sort: far more time than the tiny projection beside it
DIM = 16


class Ranker(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sort(x, dim=-1).values


class SortBound(nn.Module):
    """A tiny projection, then a sort of a large tensor inside the module named ``ranker``."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(DIM, DIM)
        self.ranker = Ranker()

    def forward(self, x: torch.Tensor, big: torch.Tensor) -> torch.Tensor:
        return self.proj(x).sum() + self.ranker(big)[:, :1].sum()


BATCH, ROWS, INNER = 8, 64, 16384  # [8, 64, 16384] @ [8, 16384, 64]: long products, a small output


class Products(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.bmm(a, b).relu()


class MatmulBound(nn.Module):
    """One large batched product (a child module) and a cheap elementwise op of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.products = Products()

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.products(a, a.transpose(1, 2)) + 1.0


@functools.cache
def sort_report() -> lf.FlopsReport:
    torch.manual_seed(0)
    x, big = torch.randn(4, DIM), torch.randn(SORT_ROWS, SORT_COLS)
    return lf.profile_model(SortBound(), (x, big), counters=("torch",), timing=3)


@functools.cache
def matmul_report() -> lf.FlopsReport:
    torch.manual_seed(0)
    return lf.profile_model(MatmulBound(), torch.randn(BATCH, ROWS, INNER), counters=("torch",), timing=5)


def _row(timing: TimingReport, module: str, operator: str) -> OpTime:
    return next(op for op in timing.operators if (op.module, op.operator) == (module, operator))


def test_a_dominant_sort_holds_most_of_the_time_and_counts_no_macs() -> None:
    timing = sort_report().timing
    assert timing is not None and timing.note is None
    assert timing.share(operator="sort") >= 0.5
    assert timing.share(module="ranker") >= 0.5
    assert timing.zero_mac_share >= 0.5
    sort = _row(timing, "ranker", "sort")
    assert (sort.macs, sort.calls, sort.zero_mac) == (0, 1, True)
    assert _row(timing, "proj", "linear").macs == 4 * DIM * DIM  # batch * in * out


def test_a_matmul_bound_model_spends_most_of_its_time_in_matmul() -> None:
    timing = matmul_report().timing
    assert timing.share(operator="matmul") >= 0.5
    assert timing.share(module="products") >= 0.5
    assert _row(timing, "products", "matmul").macs == BATCH * ROWS * INNER * ROWS  # batch * n * k * m
    assert timing.zero_mac_share <= 0.5


def test_achieved_flops_per_second_is_two_macs_over_the_forward() -> None:
    report = matmul_report()
    timing = report.timing
    macs = BATCH * ROWS * INNER * ROWS  # batch * n * k * m
    assert report.counters["torch"].macs == timing.macs == macs
    assert timing.achieved_flops_per_second == 2 * macs / timing.forward_seconds
    assert timing.mfu is None  # no CPU in Lightning's peak table
    assert len(timing.forward_runs) == 5
    assert min(timing.forward_runs) <= timing.forward_seconds <= max(timing.forward_runs)


@pytest.mark.parametrize("report", [sort_report, matmul_report], ids=["sort", "matmul"])
def test_operator_seconds_sum_within_a_factor_of_3_of_the_forward(report) -> None:
    timing = report().timing
    assert timing.forward_seconds / 3 <= timing.operator_seconds <= 3 * timing.forward_seconds


def test_every_mac_of_the_reference_sits_beside_a_time() -> None:
    for report in (sort_report(), matmul_report()):
        timing = report.timing
        assert timing.unjoined_macs == 0
        assert sum(op.macs for op in timing.operators) == report.counters["torch"].macs


class Inner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.mix = nn.Parameter(torch.randn(8, 64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bi,ij->bj", self.fc(x), self.mix)


class Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = Inner()
        self.head = nn.Linear(64, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.inner(x)).topk(1, dim=-1).values


def test_macs_join_each_module_own_calls_not_its_submodules() -> None:
    report = lf.profile_model(Outer(), torch.randn(3, 8), counters=("torch",), timing=1)
    rows = {(op.module, op.operator): op.macs for op in report.timing.operators}
    assert rows[("inner.fc", "linear")] == 3 * 8 * 8  # batch * in * out
    assert rows[("inner", "einsum")] == 3 * 8 * 64  # batch * i * j
    assert rows[("head", "linear")] == 3 * 64 * 2
    assert rows[("", "topk")] == 0
    assert report.timing.share(module="inner") >= report.timing.share(module="inner.fc")
    assert report.timing.share() == pytest.approx(1.0)


class EinsumAttention(nn.Module):
    def __init__(self, dim: int, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        scores = torch.einsum("bhnd,bhmd->bhnm", q, k) * (d // self.heads) ** -0.5
        out = torch.einsum("bhnm,bhmd->bhnd", scores.softmax(-1), v)
        return self.out(out.transpose(1, 2).reshape(b, n, d))


class TopkSelect(nn.Module):
    """Keep the ``k`` tokens of largest norm (the seed report's "light" topk)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        index = x.norm(dim=-1).topk(self.k, dim=-1).indices
        return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class Story(nn.Module):
    """The seed-like story: einsum attention, a topk selection of tokens, a head, ``F.normalize``."""

    def __init__(self, dim: int = 32, k: int = 4) -> None:
        super().__init__()
        self.attn = EinsumAttention(dim)
        self.select = TopkSelect(k)
        self.head = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.head(self.select(self.attn(x))), dim=-1)


def test_the_story_books_topk_and_normalize_as_zero_mac_time_beside_the_einsum_macs() -> None:
    b, n, d, k = 2, 16, 32, 4
    report = lf.profile_model(Story(d, k), torch.randn(b, n, d), counters=("torch",), timing=1)
    rows = {(op.module, op.operator): op for op in report.timing.operators}
    assert rows[("attn", "einsum")].macs == 2 * b * n * n * d  # q k^T and p v: b * heads * n * n * d/heads each
    assert rows[("attn.qkv", "linear")].macs == b * n * d * 3 * d
    assert rows[("head", "linear")].macs == b * k * d * d
    zero = {op.operator for op in report.timing.operators if op.zero_mac}
    assert {"topk", "gather", "linalg_vector_norm", "softmax", "div"} <= zero
    assert report.timing.unjoined_macs == 0
    assert 0 < report.timing.zero_mac_share < 1


class Stateful(nn.Module):
    """Dropout, BatchNorm in training mode, a buffer its forward writes, a generator of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.bn = nn.BatchNorm1d(8)
        self.drop = nn.Dropout(0.5)
        self.register_buffer("calls", torch.zeros(()))
        self.generator = torch.Generator().manual_seed(7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        noise = torch.rand(x.shape, generator=self.generator)
        return self.drop(self.bn(self.fc(x + noise)))


@pytest.mark.parametrize("timing", [0, 2])
def test_profiling_leaves_the_model_and_the_process_unchanged(timing: int) -> None:
    model = Stateful().train()
    model.fc.weight.requires_grad_(False)
    x = torch.randn(4, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    x_before = x.clone()
    generator_state = model.generator.get_state()
    torch.manual_seed(3)
    random.seed(3)
    rng, py_rng = torch.get_rng_state(), random.getstate()
    report = lf.profile_model(model, x, counters=("torch",), timing=timing)
    assert report.timing is None if timing == 0 else report.timing.forward_seconds > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [m.training for m in model.modules()] == flags
    assert not model.fc.weight.requires_grad and model.fc.bias.requires_grad
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert torch.equal(model.generator.get_state(), generator_state)
    assert torch.equal(torch.get_rng_state(), rng) and random.getstate() == py_rng
    assert torch.equal(x, x_before)
    assert not torch.autograd._profiler_enabled()


def test_timing_zero_measures_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    import lightning_flops.profiling as profiling

    def fail(*args, **kwargs):
        raise AssertionError("timing=0 must not time anything")

    monkeypatch.setattr(profiling, "measure_timing", fail)
    report = lf.profile_model(nn.Linear(4, 4), torch.randn(2, 4), counters=("torch",))
    assert report.timing is None
    assert json.loads(report.to_json())["timing"] is None


@pytest.mark.parametrize("bad", [-1, 1.5, True, "5"])
def test_a_bad_timing_value_names_the_argument(bad) -> None:
    with pytest.raises(FlopsConfigError, match="`timing` must be an int >= 0"):
        lf.profile_model(nn.Linear(4, 4), torch.randn(2, 4), timing=bad)


def test_a_running_profiler_is_left_alone() -> None:
    model = nn.Linear(4, 4)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as outer:
        report = lf.profile_model(model, torch.randn(2, 4), counters=("torch",), timing=1)
        model(torch.randn(2, 4))
    assert report.timing.operators == () and "another torch.profiler" in report.timing.note
    assert report.timing.forward_seconds > 0
    assert any(event.name == "aten::linear" for event in outer.events())


def test_timing_round_trips_through_json() -> None:
    report = sort_report()
    data = json.loads(report.to_json())
    assert data["timing"]["achieved_flops_per_second"] == report.timing.achieved_flops_per_second
    assert data["timing"]["zero_mac_share"] == report.timing.zero_mac_share
    again = lf.FlopsReport.from_json(report.to_json())
    assert again.timing == report.timing and again == report


def test_a_malformed_timing_field_is_refused_by_name() -> None:
    data = json.loads(sort_report().to_json())
    data["timing"]["operators"][0]["seconds"] = "fast"
    with pytest.raises(ReportFormatError, match=r"`timing\.operators\[0\]\.seconds` must be"):
        lf.FlopsReport.from_dict(data)


def test_mfu_is_achieved_over_the_peak() -> None:
    timing = TimingReport(forward_seconds=0.5, macs=10**9, peak_flops_per_second=1e12)
    assert timing.achieved_flops_per_second == 2 * 10**9 / 0.5
    assert timing.mfu == (2 * 10**9 / 0.5) / 1e12


# ------------------------------------------------------------------------------------------ text, statement, CLI
def test_markdown_shows_where_the_time_goes() -> None:
    report = sort_report()
    text = report.to_markdown()
    assert "Where the time goes: one forward takes" in text
    assert "| top operators | time share | MAC share | achieved FLOP/s |" in text
    sort_share = report.timing.share(operator="sort")
    assert f"| sort | {sort_share:.1%} | 0.0% | - |" in text
    assert f"| `ranker` | {report.timing.share(module='ranker'):.1%} | 0.0% | - |" in text


def test_statement_gives_the_zero_mac_share_with_its_evidence() -> None:
    report = sort_report()
    timing = report.timing
    text = report.statement()
    assert f"{timing.zero_mac_share:.0%} of the forward's operator time went to operators that count no MACs" in text
    assert f"(sort {timing.share(operator='sort'):.0%}" in text
    assert "Measured with torch.profiler on cpu (float32; operator CPU time)" in text
    assert "count no MACs" not in matmul_report_without_timing().statement()


@functools.cache
def matmul_report_without_timing() -> lf.FlopsReport:
    return lf.profile_model(MatmulBound(), torch.randn(2, 8, 16), counters=("torch",))


def test_cli_profile_timing_prints_the_table(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    from lightning_flops.cli import main

    out_json = tmp_path / "report.json"
    status = main(
        [
            "profile",
            "tests/test_timing.py:SortBound",
            "--input",
            f"4,{DIM}",
            f"{SORT_ROWS},{SORT_COLS}",
            "--counters",
            "torch",
            "--timing",
            "2",
            "--json",
            str(out_json),
        ]
    )
    out = capsys.readouterr().out
    assert status == 0
    assert "Where the time goes" in out and "| top modules (own calls) | time share | MAC share |" in out
    data = json.loads(out_json.read_text())
    rows = {(op["module"], op["operator"]): op for op in data["timing"]["operators"]}
    assert rows[("ranker", "sort")]["macs"] == 0 and rows[("proj", "linear")]["macs"] == 4 * DIM * DIM
    assert len(data["timing"]["forward_runs"]) == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--timing", "-1"], "`--timing` must be an int >= 0"), (["--timing", "2", "--device", "meta"], "real weights")],
)
def test_cli_refuses_a_bad_timing(capsys: pytest.CaptureFixture[str], extra: list[str], message: str) -> None:
    from lightning_flops.cli import main

    status = main(["profile", "examples.models:SmallCNN", "--input", "1,3,32,32", *extra])
    assert status == 2 and message in capsys.readouterr().err


def test_a_model_on_the_meta_device_is_not_timed() -> None:
    model = nn.Linear(4, 4, device="meta")
    with pytest.warns(RuntimeWarning, match="timing failed: .*meta device"):
        report = lf.profile_model(model, torch.randn(2, 4, device="meta"), counters=("torch",), timing=2)
    assert report.timing is None and report.counters["torch"].macs == 2 * 4 * 4
    with pytest.raises(lf.CounterError, match="timing failed"):
        lf.profile_model(model, torch.randn(2, 4, device="meta"), counters=("torch",), timing=2, strict=True)


def test_the_peak_comes_from_lightnings_table(monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning.fabric.utilities import throughput

    from lightning_flops.timing import peak_flops

    asked = []
    monkeypatch.setattr(throughput, "get_available_flops", lambda device, dtype: asked.append((device, dtype)) or 1e15)
    assert peak_flops(torch.device("cuda", 0), torch.bfloat16) == 1e15
    assert asked == [(torch.device("cuda", 0), torch.bfloat16)]
    assert peak_flops(torch.device("cpu"), torch.float32) is None and len(asked) == 1


def test_mfu_is_logged_only_when_the_peak_is_known() -> None:
    from lightning_flops.sinks import metrics_from_report

    report = sort_report()
    assert "compute/time/mfu" not in metrics_from_report(report)
    peaked = dataclasses.replace(report, timing=dataclasses.replace(report.timing, peak_flops_per_second=1e12))
    metrics = metrics_from_report(peaked)
    assert metrics["compute/time/mfu"] == pytest.approx(report.timing.achieved_flops_per_second / 1e12)
    assert metrics["compute/time/forward_seconds"] == report.timing.forward_seconds


def test_without_the_torch_counter_the_times_stand_alone() -> None:
    report = lf.profile_model(Outer(), torch.randn(3, 8), counters=("thop",), timing=1)
    timing = report.timing
    assert timing.macs is None and timing.achieved_flops_per_second is None and timing.mfu is None
    assert "the torch counter did not run" in timing.note
    assert all(op.macs == 0 for op in timing.operators) and timing.share(operator="linear") > 0
    assert "achieved" not in report.to_markdown().split("Where the time goes", 1)[1].splitlines()[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_split_holds_kernel_time() -> None:
    model = MatmulBound().cuda()
    report = lf.profile_model(model, torch.randn(BATCH, ROWS, INNER, device="cuda"), counters=("torch",), timing=5)
    timing = report.timing
    assert timing.time_source == "device" and timing.device.startswith("cuda")
    assert timing.share(operator="matmul") >= 0.5
    assert _row(timing, "products", "matmul").macs == BATCH * ROWS * INNER * ROWS  # batch * n * k * m
    assert timing.forward_seconds / 3 <= timing.operator_seconds <= 3 * timing.forward_seconds
    if timing.peak_flops_per_second is not None:
        assert timing.mfu == timing.achieved_flops_per_second / timing.peak_flops_per_second


def test_rendering_of_a_known_split() -> None:
    from lightning_flops.render import timing_markdown, timing_sentence

    timing = TimingReport(
        forward_seconds=1.0,
        forward_runs=(1.0,),
        operators=(
            OpTime("enc", "linear", 0.6, 1, 1000),
            OpTime("enc", "topk", 0.3, 2, 0),
            OpTime("", "view", 0.0001, 1, 0),
        ),
        macs=1000,
    )
    assert timing.zero_mac_share == pytest.approx(0.3001 / 0.9001)
    sentence = timing_sentence(timing)
    assert "33% of the forward's operator time went to operators that count no MACs (topk 33%);" in sentence
    assert "one forward took 1.00 s (median of 1), 2.00 kFLOP/s achieved" in sentence  # 2 * 1000 MACs / 1 s
    text = "\n".join(timing_markdown(timing))
    # linear: 0.6 / 0.9001 of the time, all the MACs, 2 * 1000 / (0.6666 * 1.0 s) = 3.00 kFLOP/s
    assert "| linear | 66.7% | 100.0% | 3.00 kFLOP/s |" in text
    assert "| topk | 33.3% | 0.0% | - |" in text
    assert "(largest: topk 33.3%)" in text and "view 0.0%" not in text
    assert "| `enc` | 100.0% | 100.0% | 2.00 kFLOP/s |" in text  # 0.9 / 0.9001 rounds to 100.0%


SEEN_MODES: list[int] = []  # outside the model: a copy of the model gets its own copies of its attributes


class ModeSpy(nn.Module):
    """Records, at each forward, how many dispatch modes are active on this thread (0 for a plain forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        SEEN_MODES.append(torch._C._len_torch_dispatch_stack())
        return self.proj(x)


def test_timed_forwards_run_without_any_counting_mode_around_them() -> None:
    # The counters' dispatch modes and hooks cost more than a small forward (a 600-op MLP timed at 2.6x its plain
    # time when the timed forwards ran inside the count's wrappers): only the forward itself is timed.
    SEEN_MODES.clear()
    repeats = 4
    report = lf.profile_model(ModeSpy(), torch.randn(2, DIM), timing=repeats)
    assert report.timing is not None
    plain = sum(n == 0 for n in SEEN_MODES)  # every forward of every counter and of the timing
    assert plain >= 1 + repeats  # the warm-up and the timed forwards (the profiled ones too)
