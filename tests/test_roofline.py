"""The roofline model (trm_fast/tools/bench/step.py: `kernel_cost`, `roofline`): FLOPs and HBM bytes of four
kernels pinned to values derived by hand, the L2 re-read of the gate_up grid's tile order, and the command."""
import json
import os

import torch

from trm_fast.cli import main
from trm_fast.tools.bench.launches import LaunchCounter, intercept_triton
from trm_fast.tools.bench.step import ROWS_FASTEST, kernel_cost, roofline
from trm_fast.tools.bench.timing import ROOFLINE_GPUS

META = torch.device("meta")
BF16 = torch.bfloat16
H100_L2 = 50 * 2**20  # 52428800 B


def _launch(fn, *args):
    """The one Triton launch fn(*args) makes, recorded on meta tensors with the sm_90 tables."""
    from trm_fast.kernels.aot import capture

    counter = LaunchCounter(META)
    with capture(90), intercept_triton(counter), counter:
        fn(*args)
    (launch,) = [l for l in counter.result() if l.kind == "triton"]
    return launch


def test_channel_gate_up_flops_and_bytes_with_either_tile_order():
    from trm_fast.kernels.swiglu import channel_gate_up

    # sudoku at batch 768: M = 768 * 97 = 74496 tokens, K = D = 512, I = 1536; bf16 (2 B); no grad (writes h only)
    x = torch.empty(74496, 512, dtype=BF16, device=META)
    w = torch.empty(3072, 512, dtype=BF16, device=META)
    launch = _launch(channel_gate_up, x, w, torch.empty(74496, 1536, dtype=BF16, device=META))
    assert (launch.args["BLOCK_M"], launch.args["BLOCK_N"], launch.args["GROUP_M"]) == (128, 64, 8)
    flops = 2 * 74496 * 512 * 3072  # gate and up: one 74496 x 512 x 3072 matmul = 234 344 153 088
    x_bytes = 74496 * 512 * 2  # 76 283 904 (more than the 52 428 800 B L2)
    w_bytes = 3072 * 512 * 2  # 3 145 728
    h_bytes = 74496 * 1536 * 2  # 228 851 712
    # grouped: a group's x rows (8 x 128 rows x 512 x 2 B = 1 MiB) and the weight fit the L2: each read once
    assert kernel_cost(launch, H100_L2) == (234_344_153_088, 308_281_344, 1.0)
    assert x_bytes + w_bytes + h_bytes == 308_281_344 and flops == 234_344_153_088
    # row blocks fastest (before issue 14): x does not fit, so it is read again for each of the 1536 / 64 = 24
    # column blocks: 24 x 76 283 904 = 1 830 813 696 B (the "about 1.8 GB per call")
    reread = kernel_cost(launch, H100_L2, group_m=ROWS_FASTEST)
    assert reread[:2] == (flops, 24 * x_bytes + w_bytes + h_bytes)
    assert abs(reread[2] - (24 * x_bytes + w_bytes) / (x_bytes + w_bytes)) < 1e-12
    # with an L2 that holds x, the order does not matter
    assert kernel_cost(launch, 128 * 2**20, group_m=ROWS_FASTEST)[1] == 308_281_344


def test_attention_forward_flops_and_bytes():
    from trm_fast.kernels.attention import attention_fwd

    # B = 768, L = 97, H = 8 heads of hd = 64 (D = 512); qkv (B, L, 3D) bf16, RoPE tables (L, hd) fp32
    B, L, H, hd = 768, 97, 8, 64
    qkv = torch.empty(B, L, 3 * H * hd, dtype=BF16, device=META)
    cos = torch.empty(L, hd, device=META)
    launch = _launch(attention_fwd, qkv, H, cos, cos, torch.empty(B, L, H * hd, dtype=BF16, device=META),
                     torch.empty(B * H, L, device=META))
    # S = Q K^T and O = P V: two L x L x hd products per (b, h), 2 FLOPs per multiply-add:
    # 2 * 2 * 768 * 8 * 97 * 97 * 64 = 14 799 077 376
    # bytes: qkv read 768 * 97 * 1536 * 2 = 228 851 712; o written 768 * 97 * 512 * 2 = 76 283 904;
    # lse written 768 * 8 * 97 * 4 = 2 383 872; cos and sin read 2 * 97 * 64 * 4 = 49 664
    assert kernel_cost(launch, H100_L2) == (14_799_077_376, 228_851_712 + 76_283_904 + 2_383_872 + 49_664, 1.0)


def test_norm_bytes():
    from trm_fast.kernels.norm import add_rms_norm_fwd

    x = torch.empty(768, 97, 512, dtype=BF16, device=META)
    launch = _launch(add_rms_norm_fwd, x, x, 1e-5, torch.empty_like(x), torch.empty(768, 97, device=META))
    # x and the residual read, y written: 3 * 74496 * 512 * 2 = 228 851 712; rstd written: 74496 * 4 = 297 984
    assert kernel_cost(launch, H100_L2) == (0, 228_851_712 + 297_984, 1.0)


def test_fused_token_mixer_flops_and_bytes():
    from trm_fast.kernels.token_mixer import token_mixer_fused

    # sudoku-mlp at batch 768: x (768, 97, 512) bf16, token hidden I = 512: W_gate_up (1024, 97) as its transpose's
    # view, W_down (97, 512), both bf16
    B, L, D, I = 768, 97, 512, 512
    x = torch.empty(B, L, D, dtype=BF16, device=META)
    w_gate_up_t = torch.empty(L, 2 * I, dtype=BF16, device=META).t()
    w_down = torch.empty(L, I, dtype=BF16, device=META)
    launch = _launch(token_mixer_fused, x, w_gate_up_t, w_down, 1e-5, torch.empty_like(x))
    # per (b, channel): gate and up, 2 * 97 * 1024 FLOPs, and down, 2 * 97 * 512:
    # 768 * 512 * (198 656 + 99 328) = 117 172 076 544
    # bytes: x read and y written, 2 * 768 * 97 * 512 * 2 = 152 567 808; the weights once, (1024 + 512) * 97 * 2
    # = 297 984 (nothing I wide: h stays in registers)
    assert kernel_cost(launch, H100_L2) == (117_172_076_544, 152_567_808 + 297_984, 1.0)
    # for a backward: h (768 * 512 * 512 * 2 = 402 653 184) and rstd (768 * 512 * 4 = 1 572 864) written too, and
    # at recomputation level 0 gate/up (805 306 368)
    h, gu = torch.empty(B, I, D, dtype=BF16, device=META), torch.empty(B, 2 * I, D, dtype=BF16, device=META)
    launch = _launch(token_mixer_fused, x, w_gate_up_t, w_down, 1e-5, torch.empty_like(x),
                     torch.empty(B, D, device=META), h, gu)
    assert kernel_cost(launch, H100_L2)[1] == 152_567_808 + 297_984 + 402_653_184 + 1_572_864 + 805_306_368


def test_roofline_sums_the_launches():
    from trm_fast.tools.bench.launches import count_step_launches
    from trm_fast.config import TRMConfig

    launches = count_step_launches(TRMConfig.preset("sudoku-att"), 768, 0)
    h100, h200 = ROOFLINE_GPUS["h100"], ROOFLINE_GPUS["h200"]
    model = roofline(launches, h100)
    assert model["launches"]["total"] == len(launches) == sum(r["calls"] for r in model["kernels"])
    assert abs(model["ms"] - sum(r["ms"] for r in model["kernels"])) < 1e-6
    assert model["compute_floor_ms"] < model["ms"]
    assert roofline(launches, h200)["ms"] < model["ms"]  # more bandwidth, same matmul rate
    assert roofline(launches, h100, ROWS_FASTEST)["ms"] > model["ms"]  # the old tile order re-reads x


def test_roofline_command(tmp_path, capsys):
    out = str(tmp_path)
    assert main(["bench", "roofline", "--preset", "sudoku-att", "--levels", "0,1", "--gpu", "a100",
                 "--out", out]) == 0
    text = capsys.readouterr().out
    assert "compute-only floor" in text and "_swiglu_gate_up" in text and "launches" in text
    with open(os.path.join(out, "roofline-a100.json")) as f:
        payload = json.load(f)
    assert payload["arch"] == 80 and payload["hardware"]["bf16_tflops"] == 312.0
    assert [(r["preset"], r["batch"], r["level"]) for r in payload["results"]] == [("sudoku-att", 768, 0),
                                                                                    ("sudoku-att", 768, 1)]
    assert all(r["ms"] > r["compute_floor_ms"] > 0 and r["launches"]["total"] > 0 for r in payload["results"])


def test_datasheet_matches_device_names():
    from trm_fast.tools.bench.timing import datasheet

    assert datasheet("NVIDIA H100 80GB HBM3") == ROOFLINE_GPUS["h100"]
    assert datasheet("NVIDIA H200") == ROOFLINE_GPUS["h200"] and datasheet("NVIDIA GH200 480GB").hbm_tbs == 4.0
    assert datasheet("NVIDIA A100-SXM4-80GB").arch == 80 and datasheet("cpu-x86_64-2cores") is None
