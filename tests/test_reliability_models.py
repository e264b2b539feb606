"""Awkward models and models under load: every counter either gives the analytic count or fails clearly, and the
model is left as it was. Expected numbers are arithmetic on the shapes, written beside each assertion.
"""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch
from torch import nn

import lightning_flops as lf
from examples.models import transformer_lm, transformer_lm_macs, transformer_lm_params
from lightning_flops.counters.base import COUNTER_NAMES

B, D, H = 3, 16, 8  # batch, input width, output width


def assert_all_counters(report: lf.FlopsReport, macs: int, counters: tuple[str, ...] = COUNTER_NAMES) -> None:
    for name in counters:
        result = report.counters[name]
        assert result.ok, f"{name}: {result.error}"
        assert result.macs == macs, name


def state_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], v) for k, v in before.items())


# --------------------------------------------------------------------------------------------- calling conventions
class KeywordOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(D, H)

    def forward(self, *, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return self.fc(x) * scale


def test_keyword_only_forward_is_counted_by_every_counter() -> None:
    report = lf.profile_model(KeywordOnly(), {"x": torch.randn(B, D), "scale": 2.0})
    assert_all_counters(report, B * D * H)  # batch * in * out
    assert report.batch_size == B


@dataclasses.dataclass
class Output:
    logits: torch.Tensor
    hidden: torch.Tensor


class _TwoHeads(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.a, self.b = nn.Linear(D, H), nn.Linear(D, 2 * H)

    def forward(self, x: torch.Tensor) -> object:
        a, b = self.a(x), self.b(x)
        if self.kind == "dataclass":
            return Output(logits=a, hidden=b)
        if self.kind == "dict":
            return {"logits": a, "nested": {"hidden": b}}
        return a, (b, [a])


@pytest.mark.parametrize("kind", ["dataclass", "dict", "tuple"])
def test_structured_outputs_are_counted_by_every_counter(kind: str) -> None:
    report = lf.profile_model(_TwoHeads(kind), torch.randn(B, D))
    assert_all_counters(report, B * D * H + B * D * 2 * H)  # batch * in * (out_a + out_b)


# ------------------------------------------------------------------------------------------------- wrapped models
def _mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(D, 32), nn.ReLU(), nn.Linear(32, H))


MLP_MACS = B * (D * 32 + 32 * H)  # batch * (in * hidden + hidden * out)


def test_torch_compiled_module_is_unwrapped_and_counted() -> None:
    model = _mlp()
    try:
        compiled = torch.compile(model)  # lazy: nothing is compiled until it is called, and we never call it
    except Exception as err:  # pragma: no cover - depends on the platform's dynamo support
        pytest.skip(f"torch.compile is unavailable here: {err}")
    report = lf.profile_model(compiled, torch.randn(B, D))
    assert_all_counters(report, MLP_MACS)
    assert report.model == "Sequential"  # the module inside, not OptimizedModule
    assert report.params.total == D * 32 + 32 + 32 * H + H  # weights + biases


def test_script_module_is_counted_by_torch_and_fails_clearly_elsewhere() -> None:
    model = torch.jit.script(_mlp())
    before = state_of(model)
    report = lf.profile_model(model, torch.randn(B, D))
    assert_all_counters(report, MLP_MACS, counters=("torch",))
    # its meta copy runs since the meta addmm is shape-only (torch's Python decomposition failed inside TorchScript)
    assert report.counters["torch"].device == "meta"
    assert "ScriptModule" in report.counters["thop"].error  # thop cannot add its buffers
    assert "not supported on ScriptModules" in report.counters["fvcore"].error  # fvcore cannot hook it
    assert_same_state(model, before)


# ----------------------------------------------------------------------------------------------- weight structure
class TiedLM(nn.Module):
    def __init__(self, vocab: int = 50, dim: int = D) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(tokens))


def test_tied_weights_are_counted_once_in_params() -> None:
    tokens = torch.randint(0, 50, (B, 5))
    report = lf.profile_model(TiedLM(), tokens)
    assert report.params.total == 50 * D  # one shared vocab x dim matrix, not two
    assert_all_counters(report, B * 5 * D * 50)  # batch * seq * dim * vocab (the lookup is free)


class CalledTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(D, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.fc(x)))


def test_module_called_twice_is_counted_twice() -> None:
    report = lf.profile_model(CalledTwice(), torch.randn(B, D))
    assert_all_counters(report, 2 * B * D * D)  # two calls * batch * in * out
    assert report.params.total == D * D + D
    assert report.counters["torch"].by_module["fc"] == 2 * B * D * D


class FrozenBackbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(D, 32), nn.BatchNorm1d(32))
        self.head = nn.Sequential(nn.Linear(32, H), nn.BatchNorm1d(H))
        self.backbone.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


@pytest.mark.parametrize("device", [None, "model"])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_frozen_eval_backbone_in_train_mode_model_is_left_as_it_was(mode: str, device: str | None) -> None:
    model = FrozenBackbone().train()
    model.backbone.eval()
    with torch.no_grad():
        model(torch.randn(8, D))  # make running stats non-trivial
    flags = [m.training for m in model.modules()]
    before = state_of(model)
    report = lf.profile_model(model, torch.randn(B, D), mode=mode, device=device, counters=("torch", "thop"))
    assert [m.training for m in model.modules()] == flags
    assert_same_state(model, before)  # BatchNorm running stats of the training-mode head untouched
    assert [p.requires_grad for p in model.backbone.parameters()] == [False] * 4
    assert report.params.trainable == 32 * H + H + 2 * H  # head linear + head norm affine
    assert report.counters["torch"].macs == B * (D * 32 + 32 * H)  # batch * (in * hidden + hidden * out)


class ItemBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(D, D), nn.Linear(D, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        if y.sum().item() > 0:  # needs real values: impossible on meta
            y = self.b(y)
        return y


@pytest.mark.parametrize(("sign", "calls"), [(1.0, 2), (-1.0, 1)], ids=["both_branches", "one_branch"])
def test_data_dependent_item_falls_back_to_counting_in_place(sign: float, calls: int) -> None:
    model = ItemBranch()
    with torch.no_grad():
        model.a.weight.fill_(0.1)
        model.a.bias.zero_()
    before = state_of(model)
    report = lf.profile_model(model, sign * torch.ones(B, D))
    assert_all_counters(report, calls * B * D * D)  # linears called * batch * in * out
    assert {report.counters[n].device for n in COUNTER_NAMES} == {"cpu"}
    assert_same_state(model, before)


class ExpandedQuery(nn.Module):
    """A learned query broadcast over the batch with ``.expand``: a view of a parameter, made under no_grad."""

    def __init__(self) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(1, D))
        self.proj = nn.Linear(D, H)
        self.fc = nn.Linear(D, H)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) + self.proj(self.query.expand(x.shape[0], -1))


@pytest.mark.parametrize("device", [None, "model"])
def test_parameter_view_under_no_grad_is_counted_by_torch(device: str | None) -> None:
    # torch 2.13's FlopCounterMode module tracker raised "Expected gradient function to be set" here
    report = lf.profile_model(ExpandedQuery(), torch.randn(B, D), device=device)
    assert_all_counters(report, 2 * B * D * H)  # two linears * batch * in * out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU to place modules on two devices")
def test_modules_on_different_devices_are_counted_in_place() -> None:  # pragma: no cover - no GPU in CI
    class TwoDevices(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(D, 32), nn.Linear(32, H).cuda()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(x).cuda()).cpu()

    model = TwoDevices()
    before = state_of(model)
    report = lf.profile_model(model, torch.randn(B, D), counters=("torch", "thop"))
    assert_all_counters(report, MLP_MACS, counters=("torch", "thop"))
    assert_same_state(model, before)


# --------------------------------------------------------------------------------------------------------- load
@pytest.mark.slow
def test_ten_thousand_modules_complete_with_timings_in_the_report() -> None:
    blocks, identities = 100, 99  # 100 blocks of one Linear and 99 Identity: 10,000 leaves + 101 containers
    model = nn.Sequential(
        *(nn.Sequential(nn.Linear(4, 4), *(nn.Identity() for _ in range(identities))) for _ in range(blocks))
    )
    assert sum(1 for _ in model.modules()) == 1 + blocks * (1 + 1 + identities)
    start = time.perf_counter()
    report = lf.profile_model(model, torch.randn(2, 4))
    elapsed = time.perf_counter() - start
    assert_all_counters(report, blocks * 2 * 4 * 4)  # blocks * batch * in * out
    seconds = [report.counters[n].seconds for n in COUNTER_NAMES]
    assert all(0 < s <= elapsed for s in seconds)
    assert lf.FlopsReport.from_json(report.to_json()).counters["torch"].seconds == report.counters["torch"].seconds


@pytest.mark.slow
def test_hundred_layer_transformer_completes_with_timings_in_the_report() -> None:
    layers, d_model, vocab, seq = 100, 16, 32, 8
    model = transformer_lm(layers=layers, d_model=d_model, heads=2, vocab=vocab, max_seq=seq)
    report = lf.profile_model(model, torch.randint(0, vocab, (2, seq)))
    assert all(report.counters[n].ok and report.counters[n].seconds > 0 for n in COUNTER_NAMES)
    assert report.counters["torch"].macs == transformer_lm_macs(2, seq, layers=layers, d_model=d_model, vocab=vocab)
    assert report.params.total == transformer_lm_params(layers, d_model, vocab=vocab, max_seq=seq)
