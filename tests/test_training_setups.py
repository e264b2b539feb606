"""Real training set-ups (issue 18) that must keep holding with ``FlopsMonitor``: a seeded ``Trainer.fit`` with the
callback ends bit-identical to the same fit without it (weights, buffers, optimizer state and module flags compared
with ``torch.equal``, logged metrics equal), and the report it writes counts the analytic MACs (or torch's own
``FlopCounterMode`` / 2, run here) of the first batch. Plus two sizes (deep, wide) that are profiled only."""

from __future__ import annotations

import itertools
import json
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import LightningModule, seed_everything
from lightning.pytorch.callbacks import BackboneFinetuning, StochasticWeightAveraging
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

import lightning_flops as lf
from tests.lit_helpers import assert_same_weights_and_optimizer, find_event_dirs, make_trainer, read_scalars

IN, HID, OUT, BATCH = 4, 8, 2, 4


# ----------------------------------------------------------------------------------------------------- harness
class Regressor(LightningModule):
    """MSE on ``(x, y)`` batches around ``self.net`` (or the subclass's ``forward``), SGD with momentum, logs its
    loss. ``params`` picks what the optimizer trains (default: every parameter that requires grad)."""

    def __init__(self, net: nn.Module | None = None, lr: float = 0.1) -> None:
        super().__init__()
        if net is not None:
            self.net = net
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def loss(self, batch: Any) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self(x).float(), y.to(torch.float32))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log("train_loss", loss)
        return loss

    def trained(self) -> Iterator[nn.Parameter]:
        return (p for p in self.parameters() if p.requires_grad)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.trained(), lr=self.lr, momentum=0.9)


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(IN, HID), nn.ReLU(), nn.Linear(HID, OUT))


MLP_MACS = BATCH * IN * HID + BATCH * HID * OUT  # batch*in*hid + batch*hid*out


def regression_data(samples: int = 16) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(samples, IN, generator=generator), torch.randn(samples, OUT, generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=BATCH)


def one_batch_per_epoch() -> DataLoader:
    """A single batch per epoch: three steps are three epochs (SWA and backbone unfreezing act per epoch)."""
    return regression_data(samples=BATCH)


@dataclass
class Setup:
    """One training set-up: a module and data factory, the first batch's MACs, and what else the fit takes."""

    make_module: Callable[[], LightningModule]
    macs: int | Callable[[], int]  # analytic, or computed here with FlopCounterMode
    data: Callable[[], Any] = regression_data
    trainer: dict[str, Any] = field(default_factory=dict)
    callbacks: Callable[[], list[Any]] = list


def fit(tmp_path: Path, setup: Setup, monitor: bool) -> tuple[LightningModule, Any, Any]:
    seed_everything(5)
    module = setup.make_module()
    callbacks = setup.callbacks() + ([lf.FlopsMonitor()] if monitor else [])
    options: dict[str, Any] = {"max_steps": 3, "log_every_n_steps": 1, **setup.trainer}
    trainer = make_trainer(tmp_path, callbacks, **options)
    trainer.fit(module, setup.data())
    return module, trainer, callbacks[-1] if monitor else None


def assert_same_fit(a: tuple[Any, Any, Any], b: tuple[Any, Any, Any], root_a: Path, root_b: Path) -> None:
    """Bit-identical weights and buffers, optimizer state, train/eval flags and logged values of two fits."""
    (module_a, trainer_a, _), (module_b, trainer_b, _) = a, b
    assert trainer_a.global_step == trainer_b.global_step == 3
    assert_same_weights_and_optimizer(module_a, trainer_a, module_b, trainer_b)
    assert [m.training for m in module_a.modules()] == [m.training for m in module_b.modules()]
    assert [p.requires_grad for p in module_a.parameters()] == [p.requires_grad for p in module_b.parameters()]
    (dir_a,), (dir_b,) = find_event_dirs(root_a), find_event_dirs(root_b)
    logged_a = {k: v for k, v in read_scalars(dir_a).items() if not k.startswith("compute/")}
    logged_b = read_scalars(dir_b)
    assert logged_a == logged_b and "train_loss" in logged_b


def torch_reference(make_module: Callable[[], nn.Module], example: Any) -> int:
    """torch's own count of a fresh module's eval forward on ``example``: ``FlopCounterMode`` FLOPs / 2."""
    module = make_module().eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(*example) if isinstance(example, tuple) else module(example)
    return counter.get_total_flops() // 2


# ---------------------------------------------------------------------------------------- 1. HF gradient checkpoint
LAYERS, WIDTH_LM, TOKENS = 2, 16, 8


def tiny_gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=32,
        n_positions=TOKENS,
        n_embd=WIDTH_LM,
        n_layer=LAYERS,
        n_head=2,
        resid_pdrop=0.1,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPT2LMHeadModel(config)


class CausalLM(LightningModule):
    """A Hugging Face causal LM trained on its own input ids (dropout on: the RNG stream matters)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids).logits

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        (ids,) = batch
        loss = self.model(input_ids=ids, labels=ids).loss
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=1e-2)


def token_data() -> DataLoader:
    ids = torch.randint(0, 32, (16, TOKENS), generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(ids), batch_size=BATCH)


def checkpointed_lm() -> CausalLM:
    model = tiny_gpt2()
    with warnings.catch_warnings():  # transformers 5 renames it activation_checkpointing_enable; users call this
        warnings.simplefilter("ignore", FutureWarning)
        model.gradient_checkpointing_enable()
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    return CausalLM(model)


def lm_reference(make: Callable[[], nn.Module]) -> int:
    """FlopCounterMode / 2 plus attention: stock FlopCounterMode has no formula for the CPU flash-attention kernel
    (ours adds it): per layer Q K^T and A V, 2 * batch * seq * seq * (heads * head_dim)."""
    attention = LAYERS * 2 * BATCH * TOKENS * TOKENS * WIDTH_LM
    return torch_reference(make, token_data().dataset.tensors[0][:BATCH]) + attention


# ---------------------------------------------------------------------------------------------------- 2. peft LoRA
class Named(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(IN, HID), nn.ReLU(), nn.Linear(HID, OUT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


RANK = 2


def lora_module() -> Regressor:
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=RANK, lora_alpha=4, lora_dropout=0.1, target_modules=["fc1", "fc2"])
    return Regressor(peft.get_peft_model(Named(), config))


LORA_MACS = MLP_MACS + BATCH * (IN * RANK + RANK * HID) + BATCH * (HID * RANK + RANK * OUT)  # + batch*(in*r + r*out)


# -------------------------------------------------------------------------------------------- 3. QAT fake-quant
class Quantizable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from torch.ao.quantization import DeQuantStub, QuantStub

        self.quant, self.net, self.dequant = QuantStub(), mlp(), DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dequant(self.net(self.quant(x)))


def qat_module() -> Regressor:
    from torch.ao.quantization import get_default_qat_qconfig, prepare_qat

    net = Quantizable().train()
    net.qconfig = get_default_qat_qconfig("fbgemm")
    return Regressor(prepare_qat(net))


# --------------------------------------------------------------------------------------------- 4. autocast, SWA, EMA
class Autocast(Regressor):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.net(x)


class Ema(Regressor):
    """An exponential moving average of ``net`` (``AveragedModel``), updated after each optimizer step."""

    def __init__(self) -> None:
        super().__init__(mlp())
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        self.ema = AveragedModel(self.net, multi_avg_fn=get_ema_multi_avg_fn(0.9))

    def trained(self) -> Iterator[nn.Parameter]:
        return iter(self.net.parameters())

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.ema.update_parameters(self.net)


class Finetuned(Regressor):
    """``BackboneFinetuning`` freezes ``backbone`` and adds it to the optimizer at epoch 1 (BatchNorm inside)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(IN, HID), nn.BatchNorm1d(HID), nn.ReLU())
        self.head = nn.Linear(HID, OUT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


# -------------------------------------------------------------------------------------------- 5. stateful RNN
SEQ = 5


class StatefulRnn(Regressor):
    """An LSTM whose hidden state is kept on the module across batches (truncated back-propagation)."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn, self.head = nn.LSTM(IN, HID, batch_first=True), nn.Linear(HID, OUT)
        self.state: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, state = self.rnn(x, self.state)
        self.state = (state[0].detach(), state[1].detach())
        return self.head(out[:, -1])


class BufferedRnn(Regressor):
    """A GRU whose hidden state is a registered buffer, written in place by each forward (saved with the weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn, self.head = nn.GRU(IN, HID, batch_first=True), nn.Linear(HID, OUT)
        self.register_buffer("hidden", torch.zeros(1, BATCH, HID))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, hidden = self.rnn(x, self.hidden.clone())
        with torch.no_grad():
            self.hidden.copy_(hidden)
        return self.head(out[:, -1])


def sequence_data() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, SEQ, IN, generator=generator), torch.randn(16, OUT, generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=BATCH, drop_last=True)


LSTM_MACS = BATCH * SEQ * (4 * HID * IN + 4 * HID * HID) + BATCH * HID * OUT  # batch*seq*4 gates*(in + hid)*hid
GRU_MACS = BATCH * SEQ * (3 * HID * IN + 3 * HID * HID) + BATCH * HID * OUT  # batch*seq*3 gates*(in + hid)*hid


# ------------------------------------------------------------------------------------------ 6. odd module graphs
VOCAB, DIM = 16, 8


class Tied(LightningModule):
    """Output projection tied to the embedding, one ``Linear`` used twice per forward."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.mix = nn.Embedding(VOCAB, DIM), nn.Linear(DIM, DIM)
        self.out = nn.Linear(DIM, VOCAB, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(self.mix(torch.relu(self.mix(self.embed(ids)))))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        (ids,) = batch
        loss = nn.functional.cross_entropy(self(ids).flatten(0, 1), ids.flatten())
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def id_data() -> DataLoader:
    ids = torch.randint(0, VOCAB, (16, 8), generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(ids), batch_size=BATCH)


TIED_MACS = 2 * BATCH * 8 * DIM * DIM + BATCH * 8 * DIM * VOCAB  # mix twice + tied out: batch*seq*dim*(dim|vocab)


class MadeInForward(Regressor):
    """Makes an activation and a fixed random projection (a fresh ``Linear``: draws from the global RNG) per call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        projection = nn.Linear(IN, IN).requires_grad_(False)
        return self.net(nn.GELU()(projection(x)))


class Branches(Regressor):
    """A ``ModuleDict`` branch chosen by a field of the batch: ``(x, branch, y)``."""

    def __init__(self) -> None:
        super().__init__()
        self.branches = nn.ModuleDict(
            {"small": nn.Linear(IN, OUT), "large": nn.Sequential(nn.Linear(IN, 16), nn.ReLU(), nn.Linear(16, OUT))}
        )

    def forward(self, x: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        return self.branches["large" if bool(branch[0]) else "small"](x)

    def loss(self, batch: Any) -> torch.Tensor:
        x, branch, y = batch
        return nn.functional.mse_loss(self(x, branch), y)


def branch_data() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, IN, generator=generator), torch.randn(16, OUT, generator=generator)
    branch = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0])  # batch 0 takes "large"
    return DataLoader(TensorDataset(x, branch, y), batch_size=BATCH)


class VaryingLengths(IterableDataset):
    """Batches of ``[BATCH, T, IN]`` with ``T`` = 3, 6, 2, 5, ... (already batched: ``DataLoader(batch_size=None)``)."""

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(0)
        for length in itertools.islice(itertools.cycle((3, 6, 2, 5)), 8):
            yield (
                torch.randn(BATCH, length, IN, generator=generator),
                torch.randn(BATCH, length, OUT, generator=generator),
            )


# --------------------------------------------------------------------------------------------------- the set-ups
SETUPS = {
    "hf_gradient_checkpointing": Setup(checkpointed_lm, lambda: lm_reference(checkpointed_lm), data=token_data),
    "peft_lora": Setup(lora_module, LORA_MACS),
    "qat_fake_quant": Setup(qat_module, MLP_MACS),
    "bf16_true": Setup(lambda: Regressor(mlp()), MLP_MACS, trainer={"precision": "bf16-true"}),
    "16_true": Setup(lambda: Regressor(mlp()), MLP_MACS, trainer={"precision": "16-true"}),
    "autocast_in_forward": Setup(lambda: Autocast(mlp()), MLP_MACS),
    "swa": Setup(
        lambda: Regressor(mlp()),
        MLP_MACS,
        data=one_batch_per_epoch,
        trainer={"max_epochs": 3},
        callbacks=lambda: [StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=1)],
    ),
    "ema": Setup(Ema, MLP_MACS),
    "backbone_finetuning": Setup(
        Finetuned,
        MLP_MACS,
        data=one_batch_per_epoch,
        trainer={"max_epochs": 3},
        callbacks=lambda: [BackboneFinetuning(unfreeze_backbone_at_epoch=1)],
    ),
    "stateful_rnn": Setup(StatefulRnn, LSTM_MACS, data=sequence_data),
    "stateful_rnn_buffer": Setup(BufferedRnn, GRU_MACS, data=sequence_data),
    "tied_and_reused": Setup(Tied, TIED_MACS, data=id_data),
    "modules_made_in_forward": Setup(lambda: MadeInForward(mlp()), BATCH * IN * IN + MLP_MACS),  # + batch*in*in
    "module_dict_branch": Setup(Branches, BATCH * IN * 16 + BATCH * 16 * OUT, data=branch_data),  # "large"
    "iterable_varying_shapes": Setup(
        lambda: Regressor(mlp()),
        BATCH * 3 * (IN * HID + HID * OUT),  # the first batch: T = 3
        data=lambda: DataLoader(VaryingLengths(), batch_size=None),
    ),
}


@pytest.mark.parametrize("name", list(SETUPS))
def test_a_setup_trains_bit_identically_with_the_monitor_and_is_counted(tmp_path: Path, name: str) -> None:
    setup = SETUPS[name]
    with_monitor = fit(tmp_path / "with", setup, monitor=True)
    without = fit(tmp_path / "without", setup, monitor=False)
    assert_same_fit(with_monitor, without, tmp_path / "with", tmp_path / "without")

    expected = setup.macs() if callable(setup.macs) else setup.macs
    report = with_monitor[2].report
    assert report is not None and report.counters["torch"].ok, report and report.counters["torch"].error
    assert report.counters["torch"].macs == expected
    assert report.train_step_flops is not None and report.train_step_flops > 0, report.train_step_error
    (path,) = (tmp_path / "with").rglob("flops_report*.json")
    assert json.loads(path.read_text())["counters"]["torch"]["macs"] == expected


def test_a_tied_weight_is_one_parameter_in_the_report(tmp_path: Path) -> None:
    report = fit(tmp_path, SETUPS["tied_and_reused"], monitor=True)[2].report
    assert report.params.total == VOCAB * DIM + DIM * DIM + DIM  # embedding (= out) + mix weight and bias


# ------------------------------------------------------------------------------------------- symlinked report names
def test_a_report_name_that_is_a_symlink_leaves_its_target_alone(tmp_path: Path) -> None:
    run_dir = tmp_path / "lightning_logs" / "version_0"
    run_dir.mkdir(parents=True)
    precious = tmp_path / "precious.txt"
    precious.write_text("not a report")
    os.symlink(precious, run_dir / "flops_report.json")  # points at another file
    os.symlink(tmp_path / "missing.json", run_dir / "flops_report.1.json")  # dangling
    setup = Setup(lambda: Regressor(mlp()), MLP_MACS, trainer={"logger": TensorBoardLogger(tmp_path, version=0)})
    report = fit(tmp_path, setup, monitor=True)[2].report
    assert precious.read_text() == "not a report" and not (tmp_path / "missing.json").exists()
    assert (run_dir / "flops_report.json").is_symlink() and (run_dir / "flops_report.1.json").is_symlink()
    written = run_dir / "flops_report.2.json"
    assert not written.is_symlink()
    assert json.loads(written.read_text())["counters"]["torch"]["macs"] == report.counters["torch"].macs == MLP_MACS


# ------------------------------------------------------------------------------------------------ deep and wide
# nested 300 deep: its own forward needs more than Python's default recursion limit of 1000 frames. Deeper nesting
# is not tested: fvcore's count grows with the cube of the nesting depth (torch's scopeName of every traced node
# builds the whole scope path; 400 deep 1 s, 800 deep 7 s, 1,600 deep 97 s on 2 busy cores), torch's and thop's with
# its square (1,600 deep: 4.6 s, 3.3 s). A flat Sequential of 3,000 layers takes 3.3 s for all three.
DEPTH, FLAT_DEPTH = 300, 3000
WIDTH = 4000


class Nested(nn.Module):
    def __init__(self, inner: nn.Module | None) -> None:
        super().__init__()
        self.linear, self.inner = nn.Linear(2, 2), inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x)
        return x if self.inner is None else self.inner(x)


class Wide(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList(nn.Linear(2, 1) for _ in range(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.branches], dim=1)


@pytest.fixture
def deep_recursion() -> Iterator[None]:
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20 * DEPTH)  # what the user of such a model does
    try:
        yield
    finally:
        sys.setrecursionlimit(limit)


def nested(depth: int) -> nn.Module:
    model: nn.Module | None = None
    for _ in range(depth):
        model = Nested(model)
    assert model is not None
    return model


@pytest.mark.parametrize(
    "make, depth",
    [
        pytest.param(nested, DEPTH, id="nested"),
        pytest.param(
            lambda depth: nn.Sequential(*(nn.Linear(2, 2) for _ in range(depth))),
            FLAT_DEPTH,
            id="sequential",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_a_deep_model_is_counted(deep_recursion: None, make: Callable[[int], nn.Module], depth: int) -> None:
    report = lf.profile_model(make(depth), torch.randn(3, 2))
    for name, result in report.counters.items():
        assert result.ok and result.macs == depth * 3 * 2 * 2, (name, result.error)  # depth * batch * in * out
    assert report.params.total == depth * (2 * 2 + 2)


@pytest.mark.slow
def test_a_very_wide_model_is_counted() -> None:
    report = lf.profile_model(Wide(WIDTH), torch.randn(3, 2))
    for name, result in report.counters.items():
        assert result.ok and result.macs == WIDTH * 3 * 2, (name, result.error)  # width * batch * in * out(1)
    assert report.params.total == WIDTH * (2 + 1)
