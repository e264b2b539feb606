"""``lightning-flops profile --generate N`` and ``compare`` on generation reports: the analytic numbers, per sample."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import lightning_flops as lf
from lightning_flops.cli import main

pytest.importorskip("transformers")

D, H, HD, L, V = 32, 4, 8, 2, 100  # GPT-2: width, heads, head dim, layers, vocab

MODEL_FILE = """
from transformers import GPT2Config, GPT2LMHeadModel

def tiny_gpt2():
    config = GPT2Config(vocab_size=100, n_positions=32, n_embd=32, n_layer=2, n_head=4, bos_token_id=0,
                        eos_token_id=1, pad_token_id=0)
    return GPT2LMHeadModel(config)
"""


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(list(args))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _gpt2_step(q_len: int, kv_len: int, head_positions: int = 1) -> int:
    """One forward of one sequence: c_attn D -> 3D, c_proj, MLP D -> 4D -> D; attention; the LM head."""
    linear = q_len * (D * 3 * D + D * D + 2 * D * 4 * D)
    return L * (linear + 2 * H * q_len * kv_len * HD) + head_positions * D * V


def test_profile_generate_prints_the_table_and_writes_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "gpt2_model.py").write_text(MODEL_FILE)
    out = tmp_path / "gen.json"
    target = f"{tmp_path / 'gpt2_model.py'}:tiny_gpt2"
    status, stdout, _ = run_cli(capsys, "profile", target, "--input", "int64:1,16", "--generate", "8", "--json",
                                str(out))  # fmt: skip
    assert status == 0
    prefill = _gpt2_step(16, 16)  # batch 1, a 16-token prompt, logits for the last position only
    decode = [_gpt2_step(1, 16 + i) for i in range(1, 8)]
    assert f"| prefill | 16 | {prefill:,} |" in stdout
    assert f"| decode 7 | 23 | {decode[-1]:,} |" in stdout
    data = json.loads(out.read_text())
    assert data["prefill_macs"] == prefill and data["decode_macs"] == decode
    assert lf.GenerationReport.from_json(out.read_text()).new_tokens == 8


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input", "int64:1,4", "--generate", "0"], "`--generate` must be an int >= 1"),
        (["--input", "2,4", "--generate", "2"], "`--generate` takes one --input of token ids"),
        (["--input", "int64:1,4", "--generate", "2", "--device", "meta"], "use --device cpu"),
    ],
)
def test_profile_generate_bad_input_exits_2(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "gpt2_model.py").write_text(MODEL_FILE)
    status, _, err = run_cli(capsys, "profile", f"{tmp_path / 'gpt2_model.py'}:tiny_gpt2", *args)
    assert status == 2 and message in err


def _write_generation(path: Path, prefill: int, decode: tuple[int, ...]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    gen = lf.GenerationReport(model="LM", batch_size=2, prompt_tokens=5, new_tokens=len(decode) + 1,
                              prefill_macs=prefill, decode_macs=decode)  # fmt: skip
    path.write_text(gen.to_json())


def test_compare_reads_generation_reports_per_sample(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write_generation(tmp_path / "small" / "flops_report.json", 2_000, (400, 600))
    _write_generation(tmp_path / "large" / "flops_report.json", 8_000, (1_000, 1_000, 1_000))
    status, out, _ = run_cli(capsys, "compare", str(tmp_path), "--format", "csv")
    assert status == 0
    rows = {row["run"]: row for row in csv.DictReader(io.StringIO(out))}
    assert rows["small"]["prefill_macs"] == "1000"  # 2,000 MACs for a batch of 2
    assert rows["small"]["decode_macs_per_token"] == "250"  # (400 + 600) / (2 samples * 2 steps)
    assert (
        rows["large"]["decode_macs_per_token"] == "500" and rows["large"]["total_flops"] == "11000"
    )  # 2 * (8,000 + 3,000) / 2 samples
    status, out, _ = run_cli(capsys, "compare", str(tmp_path))
    assert "prefill MACs" in out and "decode MACs/token" in out and "250 MACs" in out


def test_compare_mixes_profile_and_generation_reports_in_one_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_generation(tmp_path / "gen" / "flops_report.json", 2_000, (400, 600))
    report = lf.profile_model(nn.Linear(4, 8), torch.randn(2, 4), counters=("torch",))
    (tmp_path / "linear").mkdir()
    (tmp_path / "linear" / "flops_report.json").write_text(report.to_json())
    status, out, _ = run_cli(capsys, "compare", str(tmp_path), "--format", "json")
    data = json.loads(out)
    assert status == 0
    assert [r["torch_macs"] for r in data["runs"]] == [4 * 8]  # per sample: in * out
    assert [r["prefill_macs"] for r in data["generation_runs"]] == [1_000]


def test_compare_latex_refuses_generation_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write_generation(tmp_path / "flops_report.json", 2_000, (400,))
    status, _, err = run_cli(capsys, "compare", str(tmp_path), "--format", "latex")
    assert status == 2 and "reads profile reports only" in err


MOE_FILE = """
from transformers import MixtralConfig, MixtralForCausalLM

def tiny_mixtral():
    return MixtralForCausalLM(MixtralConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_local_experts=4,
                              num_experts_per_tok=2, max_position_embeddings=64))
"""


def test_profile_moe_routing_balanced_on_meta(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "moe_model.py").write_text(MOE_FILE)
    out = tmp_path / "moe.json"
    target = f"{tmp_path / 'moe_model.py'}:tiny_mixtral"
    common = ("profile", target, "--input", "int64:1,8", "--device", "meta", "--counters", "torch")
    status, _, _ = run_cli(capsys, *common, "--moe-routing", "balanced", "--json", str(out))
    assert status == 0
    data = json.loads(out.read_text())
    # per token: q, o 32 x 32; k, v 32 x 16; router 32 x 4; top-2 experts x (gate, up, down) 32 x 64; attention 8 x 8
    layer = 8 * (2 * 32 * 32 + 2 * 32 * 16 + 32 * 4 + 2 * 3 * 32 * 64) + 2 * 4 * 8 * 8 * 8
    assert data["counters"]["torch"]["macs"] == 2 * layer + 8 * 32 * 100  # + the LM head at every position
    assert data["moe_routing"] == "balanced"
    status, stdout, _ = run_cli(capsys, *common)  # without the assumption: the count fails and says what to pass
    assert status == 1 and "moe_routing='balanced'" in stdout
