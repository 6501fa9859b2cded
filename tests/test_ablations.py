"""The paper's comparison rows: every row builds, runs forward and backward, trains a few steps through the
trainer, and its gradient reaches exactly the block applications the row says (counted with backward hooks on
block outputs); the variants reduce to TRM where they should; the ablations command lists and runs rows."""
import argparse
import json
import os

import pytest
import torch

from trm_fast.tools.ablations import (ROWS, add_ablations_subparser, block_applications, render_table, row_config,
                                run_ablations_command, run_row)
from trm_fast.model import TRM, build_model
from trm_fast.ops.accuracy import rel_err
from model_utils import count_block_grads, tiny_batch

TINY = ["model.hidden_size=32", "model.num_heads=2", "model.puzzle_emb_dim=32", "model.num_puzzle_identifiers=4"]


def tiny_row(row, *extra):
    return row_config(row, base="sudoku4-tiny", extra=TINY + list(extra))


# ---------------------------------------------------------------------------------------------- every row


@pytest.mark.parametrize("row", list(ROWS))
def test_every_row_backpropagates_to_exactly_its_blocks(row):
    config = tiny_row(row, "model.T=3", "model.n=3")  # T, n > 2 separate the last cycle from the others
    if row in ("4-blocks-n3", "T2-n2"):
        config = tiny_row(row)  # these rows set T and n themselves
    model = build_model(config.model)
    counts, out = count_block_grads(model, config)
    forward, with_grad = block_applications(config.model)
    assert sum(c[0] for c in counts.values()) == forward
    assert sum(c[1] for c in counts.values()) == with_grad
    m = config.model
    assert out.logits.shape == (3, m.seq_len, m.vocab_size) and torch.isfinite(out.logits).all()
    assert all(not t.requires_grad for t in out.carry)
    for name, p in model.named_parameters():  # every weight is used with gradient (heads, embeddings, nets)
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_the_rows_change_what_they_say():
    m = {row: tiny_row(row) for row in ROWS}
    assert m["trm-mlp"].model.mixer == "mlp" and m["trm-mlp"].model.pos_encoding == "none"
    assert m["self-attention"].model.mixer == "attention" and m["self-attention"].model.pos_encoding == "rope"
    assert m["no-ema"].train.ema is False and m["trm-mlp"].train.ema is True
    assert m["act-continue"].model.act_continue and not m["trm-mlp"].model.act_continue
    assert (m["4-blocks-n3"].model.num_blocks, m["4-blocks-n3"].model.n) == (4, 3)
    assert (m["T2-n2"].model.T, m["T2-n2"].model.n) == (2, 2)
    assert m["hrm"].model.arch == "hrm" and m["hrm"].model.puzzle_emb_len == 1
    full = row_config("trm-mlp").model  # the paper's ablation baseline: TRM-MLP, T=3, n=6, 2 blocks
    assert (full.mixer, full.T, full.n, full.num_blocks) == ("mlp", 3, 6, 2)
    assert block_applications(full) == (42, 14)
    assert block_applications(row_config("1-step-grad").model) == (42, 4)
    assert block_applications(row_config("hrm").model) == (24, 8)


def test_full_gradient_counts_per_network():
    config = tiny_row("trm-mlp", "model.T=3", "model.n=3")
    counts, _ = count_block_grads(build_model(config.model), config)
    T, n, blocks = 3, 3, config.model.num_blocks
    assert counts == {"net": [T * (n + 1) * blocks, (n + 1) * blocks]}  # the last cycle's 2(n+1) applications


def test_one_step_gradient_reaches_only_the_last_z_update_and_the_y_update():
    config = tiny_row("1-step-grad", "model.T=3", "model.n=3")
    model = build_model(config.model)
    order = []  # which network call (in order) received gradient
    calls = []

    def fn(module, args, output):
        calls.append(output)

    model.net.register_forward_hook(fn)
    inputs, ids = tiny_batch(config)
    out = model(model.initial_carry(3, "cpu"), inputs, ids)
    out.logits.float().square().sum().backward()
    order = [i for i, o in enumerate(calls) if o.requires_grad]
    total = 3 * (3 + 1)
    assert len(calls) == total and order == [total - 2, total - 1]  # the last z update, then the y update
    # same forward values as TRM with the same weights: only the gradient differs
    trm = TRM(config.model)
    trm.load_state_dict(model.state_dict())
    ref = trm(trm.initial_carry(3, "cpu"), inputs, ids)
    torch.testing.assert_close(ref.logits, out.logits, rtol=0, atol=0)


def test_separate_networks_both_receive_gradient_and_reduce_to_trm_with_equal_weights():
    config = tiny_row("separate-nets")
    model = build_model(config.model)
    counts, _ = count_block_grads(model, config)
    n, blocks = config.model.n, config.model.num_blocks
    assert counts["net"][1] == n * blocks and counts["net_y"][1] == blocks
    for name in ("net", "net_y"):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(model, name).parameters())
    assert not all(torch.equal(a, b) for a, b in zip(model.net.parameters(), model.net_y.parameters()))
    with torch.no_grad():
        for a, b in zip(model.net_y.parameters(), model.net.parameters()):
            a.copy_(b)
    trm = TRM(config.model)
    trm.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("net_y.")})
    inputs, ids = tiny_batch(config)
    torch.testing.assert_close(model(model.initial_carry(3, "cpu"), inputs, ids).logits,
                               trm(trm.initial_carry(3, "cpu"), inputs, ids).logits, rtol=0, atol=0)


def test_single_latent_has_no_y_state():
    config = tiny_row("single-latent")
    model = build_model(config.model)
    carry = model.initial_carry(3, "cpu")
    assert len(carry) == 1 and torch.equal(carry[0], model.z_init.float().expand_as(carry[0]))
    counts, out = count_block_grads(model, config)
    assert len(out.carry) == 1 and counts["net"][1] == (config.model.n + 1) * config.model.num_blocks
    # per cycle: z = net(z + x) n times, then z = net(z); heads on z
    inputs, ids = tiny_batch(config)
    x, (z,), ops, rope = model.prepare(model.initial_carry(3, "cpu"), inputs, ids)
    with torch.no_grad():
        for _ in range(config.model.T):
            for _ in range(config.model.n):
                z = model.net(z, x, ops, rope)
            z = model.net(z, torch.zeros_like(z), ops, rope)
        out = model(model.initial_carry(3, "cpu"), inputs, ids)
    torch.testing.assert_close(out.carry[0], z, rtol=0, atol=0)
    torch.testing.assert_close(out.logits, model.heads(z)[0], rtol=0, atol=0)
    reset = model.reset_carry(torch.tensor([True, False, True]), (z,))
    assert len(reset) == 1 and torch.equal(reset[0][1], z[1]) and torch.equal(reset[0][0], carry[0][0])


def test_multiscale_carries_n_plus_one_features_as_the_authors_define_them():
    config = tiny_row("multiscale-latent")
    model = build_model(config.model)
    n = config.model.n
    carry = model.initial_carry(3, "cpu")
    assert len(carry) == n + 1 and not torch.equal(carry[1], carry[2])  # each feature starts from its own vector
    counts, out = count_block_grads(model, config)
    assert len(out.carry) == n + 1 and counts["net"][1] == (n + 1) * config.model.num_blocks
    # trm_hier6: the i-th z update reads the sum of all z features and overwrites z_i; y reads that sum
    inputs, ids = tiny_batch(config)
    x, (y, *zs), ops, rope = model.prepare(carry, inputs, ids)
    with torch.no_grad():
        for _ in range(config.model.T):
            for i in range(n):
                zs[i] = model.net(sum(zs[1:], zs[0]), y + x, ops, rope)
            y = model.net(y, sum(zs[1:], zs[0]), ops, rope)
        out = model(carry, inputs, ids)
    for got, want in zip(out.carry, [y] + zs):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    reset = model.reset_carry(torch.tensor([True, False, False]), out.carry)
    assert all(torch.equal(r[0], c[0]) and torch.equal(r[1], o[1]) for r, c, o in zip(reset, carry, out.carry))


def test_multiscale_with_one_feature_is_trm():
    config = tiny_row("multiscale-latent", "model.n=1")
    model = build_model(config.model)
    trm = TRM(config.model)
    trm.load_state_dict({k: v for k, v in model.state_dict().items() if k != "z_inits"})
    inputs, ids = tiny_batch(config)
    carry = model.initial_carry(3, "cpu")
    torch.testing.assert_close(model(carry, inputs, ids).logits, trm(carry, inputs, ids).logits, rtol=0, atol=0)


@pytest.mark.parametrize("row", ["hrm", "multiscale-latent"])
def test_rows_run_on_the_triton_ops(row):
    """The variants call the op namespace they are given: the Triton kernels (interpreted on the CPU) give the
    reference path's gradients."""
    extra = ["model.num_heads=1", "model.T=1", "model.n=2", "model.num_blocks=1", "model.hrm_low_blocks=1",
             "model.hrm_high_blocks=1"]
    grads = {}
    for backend in ("torch", "triton"):
        config = tiny_row(row, *extra, f"model.backend={backend}")
        torch.manual_seed(0)
        model = build_model(config.model)
        assert model.backend(torch.device("cpu")) == backend
        count_block_grads(model, config, B=2)
        grads[backend] = [p.grad for p in model.parameters()]
    for a, b in zip(grads["triton"], grads["torch"]):  # fp32 kernels, different summation order
        assert rel_err(a, b) < 1e-5


def test_combining_model_ablations_is_refused():
    config = tiny_row("separate-nets", "model.grad_mode=one_step")
    with pytest.raises(ValueError, match="cannot be combined"):
        build_model(config.model)


# ---------------------------------------------------------------------------------------------- training and the command


@pytest.mark.parametrize("row", list(ROWS))
def test_every_row_trains_through_the_trainer(row, tmp_path):
    # a shallow recursion keeps this cheap, except in the rows that set T and n themselves
    extra = TINY + ([] if row in ("T2-n2", "4-blocks-n3") else ["model.T=2", "model.n=2"])
    result = run_row(row, "sudoku4-tiny", str(tmp_path), budget_steps=2, extra=extra, progress=False, render=False)
    assert result["row"] == row and result["steps"] == 2 and 0.0 <= result["exact_accuracy"] <= 1.0
    assert result["blocks_per_step"] == block_applications(tiny_row(row, *extra[len(TINY):]).model)[0]
    lines = open(tmp_path / "results.jsonl").read().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["row"] == row
    summary = json.load(open(os.path.join(result["run_dir"], "summary.json")))
    assert summary["steps"] == 2 and summary["parameters"] == result["parameters"]


def _parse(argv):
    parser = argparse.ArgumentParser()
    add_ablations_subparser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["ablations"] + argv)


def test_list_shows_every_row_with_its_published_accuracy(capsys):
    assert run_ablations_command(_parse(["--list", "--preset", "sudoku4-tiny"])) == 0
    text = capsys.readouterr().out
    for row in ROWS.values():
        line = next(l for l in text.splitlines() if l.startswith(row.name + " "))
        assert f"{row.published:.1f}%" in line and all(o in line for o in row.overrides)
    assert "hrm-sudoku" in text


def test_run_command_appends_rows_to_one_table(tmp_path, capsys):
    args = _parse(["--run", "T2-n2,hrm", "--budget-steps", "1", "--preset", "sudoku4-tiny", "--out", str(tmp_path),
                   "--no-progress"] + sum((["--set", s] for s in TINY), []))
    assert run_ablations_command(args) == 0
    results = [json.loads(l) for l in open(tmp_path / "results.jsonl")]
    assert [r["row"] for r in results] == ["T2-n2", "hrm"] and all(r["budget"] == "1 steps" for r in results)
    table = open(tmp_path / "results.md").read()
    assert table.index("| T2-n2 |") < table.index("| hrm |")  # the paper's row order
    assert len({r["run_dir"] for r in results}) == 2
    with pytest.raises(ValueError, match="unknown ablation row"):
        run_ablations_command(_parse(["--run", "no-such-row", "--budget-steps", "1"]))
    with pytest.raises(ValueError, match="budget"):
        run_ablations_command(_parse(["--run", "hrm"]))


def test_table_keeps_the_latest_run_per_row_and_budget(tmp_path):
    base = {"table": "Table 1", "base": "b", "extra": [], "steps": 5, "published": 87.4, "token_accuracy": 0.5,
            "parameters": 10, "blocks_per_step": 4, "blocks_with_grad": 2, "train_seconds": 1.0, "device": "cpu"}
    with open(tmp_path / "results.jsonl", "w") as f:
        for row, budget, acc in (("trm-mlp", "5 steps", 0.1), ("trm-mlp", "5 steps", 0.3), ("hrm", "5 steps", 0.2),
                                 ("trm-mlp", "9 steps", 0.4)):
            f.write(json.dumps({**base, "row": row, "budget": budget, "exact_accuracy": acc}) + "\n")
    md, png = render_table(str(tmp_path))
    lines = [l for l in open(md).read().splitlines() if l.startswith("| trm-mlp") or l.startswith("| hrm")]
    assert len(lines) == 3 and "30.0%" in lines[0] and "10.0%" not in "".join(lines)
    (tmp_path / "results.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match="line 1"):
        render_table(str(tmp_path))


def test_act_continue_row_trains_the_continue_head_from_the_next_step():
    from trm_fast.train.act import SupervisionState, supervision_step

    config = tiny_row("act-continue", "model.T=1", "model.n=1")
    model = build_model(config.model)
    with torch.no_grad():  # at init (weight 0) this and the next step's Q-values agree: no gradient to see
        model.q_head_weight.normal_(0, 0.5)
    B = 3
    inputs, ids = tiny_batch(config, B)
    state = SupervisionState.fresh(model, B, config.model.seq_len, "cpu")
    res = supervision_step(model, state, {"inputs": inputs, "labels": inputs.clone(), "puzzle_identifiers": ids},
                           step=0, seed=0, slot_index=torch.arange(B), training=True)
    assert res.continue_target is not None and res.loss.cont > 0
    res.loss.total.backward()
    assert model.q_head_weight.grad[1].abs().sum() > 0  # the q_continue row of the head learns
    plain = tiny_row("trm-mlp", "model.T=1", "model.n=1")
    res = supervision_step(build_model(plain.model), SupervisionState.fresh(model, B, plain.model.seq_len, "cpu"),
                           {"inputs": inputs, "labels": inputs.clone(), "puzzle_identifiers": ids},
                           step=0, seed=0, slot_index=torch.arange(B), training=True)
    assert res.continue_target is None and res.loss.cont == 0
