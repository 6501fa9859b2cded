"""Helpers shared by the model-level tests (TRM variants, HRM): tiny random batches and gradient reach per block."""
import torch

NETS = ("net", "net_y", "net_high")  # every network a model variant may have


def tiny_batch(config, B=3, seed=0):
    """Random (inputs, puzzle ids) for a TRMConfig's model."""
    g = torch.Generator().manual_seed(seed)
    m = config.model
    return (torch.randint(0, m.vocab_size, (B, m.seq_len), generator=g),
            torch.randint(0, m.num_puzzle_identifiers, (B,), generator=g))


def count_block_grads(model, config, B=3):
    """Runs one supervision step and backward. Returns, per network, [block applications, applications whose
    output received gradient], and the step output."""
    counts = {}

    def hook(name):
        def fn(module, args, output):
            c = counts.setdefault(name, [0, 0])
            c[0] += 1
            if output.requires_grad:
                output.register_hook(lambda g: c.__setitem__(1, c[1] + 1))
        return fn

    for name in NETS:
        if hasattr(model, name):
            for block in getattr(model, name).blocks:
                block.register_forward_hook(hook(name))
    inputs, ids = tiny_batch(config, B)
    out = model(model.initial_carry(B, "cpu"), inputs, ids)
    (out.logits.float().square().sum() + out.q_halt.sum() + out.q_continue.sum()).backward()
    return counts, out
