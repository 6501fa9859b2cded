"""Kernel launches per supervision step, counted as a GPU would see them (trm_fast/tools/bench/launches.py), and
ceilings on those counts per preset and recomputation level.

The counting rules:
  - the model runs on "meta" tensors in bf16 at the preset's real shape and batch, Triton path, with sm_90 tables;
  - one supervision step: the forward of every cycle, the loss and the backward of loss / batch (no optimiser step);
  - a Triton launch is one `kernel[grid](...)` call, intercepted (recorded, never compiled or run);
  - an aten op below autograd, after CompositeImplicitAutograd decomposition, is one launch, except views and
    metadata ops, allocations without a fill, `.item()` (a sync, counted apart) and ops on host tensors only;
  - `mm(out_dtype=float32)` is one cuBLAS launch: off CUDA `mm_fp32` upcasts both operands and multiplies, and that
    pattern (two bf16 -> fp32 `_to_copy` feeding one `mm`) counts as the one CUDA op;
  - mm, addmm, bmm, baddbmm, addmm_, baddbmm_ and that op are cuBLAS, every other counted aten op "aten"; an
    out-of-place addmm or baddbmm adding a matrix also copies it into its output first (one aten copy_), as on CUDA;
  - custom ops (`trm_fast::`) are not launches; what their implementations launch is.
"""
import pytest
import torch

from trm_fast.config import TRMConfig
from trm_fast.tools.bench.launches import LaunchCounter, count_step_launches, intercept_triton, summary

META = torch.device("meta")

# Launches per supervision step today (docs/kernels.md, "Launches per supervision step"). Before the weight-cast cache,
# the hoisted y + x and the fused injection output: 1039/1039/1193, 997/997/1137, 797/797/907; then 793/793/896,
# 751/751/840, 627/627/700; the halting draws in one hash pass: 765/765/868, 723/723/812, 599/599/672; the residual's
# gradient added by the sub-layers' last backward matmul and the fused token loss: 687/687/785, 645/645/729,
# 529/529/599; the token-mixing sub-layer and its post-norm in one kernel (kernels/token_mixer.py): the ceilings below.
# A change that adds launches fails here; one that removes some lowers the ceiling with it.
CEILINGS = {
    ("sudoku-att", 0): 687, ("sudoku-att", 1): 687, ("sudoku-att", 2): 785,
    ("sudoku-mlp", 0): 561, ("sudoku-mlp", 1): 561, ("sudoku-mlp", 2): 617,
    ("maze", 0): 529, ("maze", 1): 529, ("maze", 2): 599,
}
# Each fp32 master is cast to bf16 once per step (the ops' cast cache): the block weights (4 per block) and the
# embedding and heads' casts of the reference linear (not cached: it runs where autograd records).
WEIGHT_CASTS = {"sudoku-att": 14, "sudoku-mlp": 12, "maze": 14}


@pytest.mark.parametrize("preset,level", sorted(CEILINGS))
def test_launches_per_step_stay_within_the_ceiling(preset, level):
    batch = 768 if preset.startswith("sudoku") else 192
    counts = summary(count_step_launches(TRMConfig.preset(preset), batch, level))
    assert counts["total"] <= CEILINGS[preset, level], counts
    assert counts["weight_casts"] <= WEIGHT_CASTS[preset], counts
    assert counts["total"] == counts["triton"] + counts["cublas"] + counts["aten"]
    assert counts["triton"] > 0 and counts["cublas"] > 0 and counts["backward"] > 0


def test_the_count_does_not_depend_on_the_batch():
    config = TRMConfig.preset("sudoku-mlp")  # its batch-reduction kernel splits the batch by size
    assert summary(count_step_launches(config, 768, 0)) == summary(count_step_launches(config, 5, 0))


def test_counting_rules():
    weight = torch.nn.Parameter(torch.empty(64, 32, device=META))
    counter = LaunchCounter(META, [weight])
    x = torch.empty(8, 32, dtype=torch.bfloat16, device=META)
    with counter:
        w = weight.to(torch.bfloat16)  # a weight cast: one aten launch, tagged
        y = x @ w.t()  # t: a view; mm: cuBLAS
        y.view(4, 2, 64).transpose(0, 1).expand(2, 4, 64).detach()  # views: nothing
        torch.empty(3, device=META)  # an allocation: nothing
        z = y + 1  # one aten launch
        g = z.t().float() @ x.float()  # mm_fp32's fallback: one fp32-output cuBLAS launch
        bool((z > 0).any())  # gt and any: two launches; .item(): a sync
    launches = counter.result()
    assert [(l.kind, l.name) for l in launches] == [
        ("aten", "_to_copy"), ("cublas", "mm"), ("aten", "add"), ("cublas", "mm_fp32out"), ("aten", "gt"),
        ("aten", "any")]
    assert [l.tags for l in launches][0] == {"weight_cast"} and not any(l.tags for l in launches[1:])
    fp32_mm = launches[3].args
    assert [(s.shape, s.dtype) for s in fp32_mm["inputs"]] == [((64, 8), "bfloat16"), ((8, 32), "bfloat16")]
    assert fp32_mm["outputs"][0].dtype == "float32" and g.dtype == torch.float32
    assert counter.syncs == 1


def test_a_matrix_added_out_of_place_is_copied_first():
    """CUDA's addmm/baddbmm copy the added matrix into the output before a beta = 1 matmul unless they write in place
    (PyTorch's addmm_out_cuda_impl; a 1-D bias goes to cuBLASLt's epilogue instead): the counter charges that copy."""
    counter = LaunchCounter(META)
    a, w = torch.empty(8, 32, dtype=torch.bfloat16, device=META), torch.empty(32, 16, dtype=torch.bfloat16, device=META)
    c, bias = torch.empty(8, 16, dtype=torch.bfloat16, device=META), torch.empty(16, dtype=torch.bfloat16, device=META)
    with counter:
        torch.addmm(c, a, w)  # copy_ + addmm
        torch.addmm(bias, a, w)  # addmm
        torch.addmm(c, a, w, beta=0)  # addmm
        c.addmm_(a, w)  # addmm_
        c.view(1, 8, 16).baddbmm_(a.view(1, 8, 32), w.view(1, 32, 16))  # baddbmm_
        torch.baddbmm(c.view(1, 8, 16), a.view(1, 8, 32), w.view(1, 32, 16))  # copy_ + baddbmm
    assert [(l.kind, l.name) for l in counter.result()] == [
        ("aten", "copy_"), ("cublas", "addmm"), ("cublas", "addmm"), ("cublas", "addmm"), ("cublas", "addmm_"),
        ("cublas", "baddbmm_"), ("aten", "copy_"), ("cublas", "baddbmm")]


def test_triton_launches_are_recorded_not_run():
    from trm_fast.kernels.norm import add_rms_norm_fwd

    counter = LaunchCounter(META)
    x = torch.empty(6, 97, 512, dtype=torch.bfloat16, device=META)
    with intercept_triton(counter), counter:
        add_rms_norm_fwd(x, x, 1e-5, torch.empty_like(x), torch.empty(6, 97, device=META))
    (launch,) = counter.result()
    assert (launch.kind, launch.name) == ("triton", "_add_rms_norm_fwd")
    assert launch.args["n_rows"] == 6 * 97 and launch.args["n_cols"] == 512 and launch.args["HAS_INJECT"] is False
    assert launch.grid == (-(-6 * 97 // launch.args["ROWS"]), 1, 1)
    assert launch.args["x_ptr"].shape == (6, 97, 512) and launch.args["x_ptr"].dtype == "bfloat16"
