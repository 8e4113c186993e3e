"""Shared pieces of the FFN partition methods.

An *assignment* says which dense FFN neurons each expert owns. Legend: F dense FFN width (neurons),
E experts, F_e neurons per expert (F / E for independent methods), D hidden size, C calibration clusters.

- independent methods return a LongTensor [E, F_e]: every neuron exactly once, rows sorted ascending;
- sharing-inner returns [E, F_e] where a neuron may appear in several rows or none;
- sharing-inter returns (routed [E, F_e], shared [Fs]) that together cover every neuron exactly once.
"""
from __future__ import annotations

import torch

from ...errors import UserError


class PartitionError(UserError, ValueError):
    """A partition request that cannot be satisfied; the message is one line naming the numbers."""


def check_divisible(num_neurons: int, num_experts: int) -> int:
    """Neurons per expert F / E, or PartitionError when E does not divide F."""
    if num_experts < 1:
        raise PartitionError(f"num_experts={num_experts} must be >= 1")
    if num_neurons % num_experts:
        raise PartitionError(f"FFN size {num_neurons} is not divisible by num_experts={num_experts}")
    return num_neurons // num_experts


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with `seed` (construction is deterministic given the seed)."""
    g = torch.Generator()
    g.manual_seed(int(seed))
    return g


def labels_to_assignment(labels_F: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Per-neuron expert labels [F] -> assignment [E, F/E] (neuron indices ascending within each expert)."""
    labels_F = torch.as_tensor(labels_F, dtype=torch.long)
    F_e = check_divisible(labels_F.numel(), num_experts)
    counts = torch.bincount(labels_F, minlength=num_experts)
    if counts.numel() != num_experts or bool((counts != F_e).any()):
        raise PartitionError(f"labels are not balanced: expected {F_e} neurons per expert, got {counts.tolist()}")
    order = torch.argsort(labels_F * labels_F.numel() + torch.arange(labels_F.numel()), stable=True)
    return order.view(num_experts, F_e)


def assignment_to_labels(assign_EF: torch.Tensor, num_neurons: int) -> torch.Tensor:
    """Inverse of labels_to_assignment for independent assignments."""
    labels = torch.full((num_neurons,), -1, dtype=torch.long)
    E = assign_EF.shape[0]
    labels[assign_EF.reshape(-1)] = torch.arange(E).repeat_interleave(assign_EF.shape[1])
    return labels


def check_independent(assign_EF: torch.Tensor, num_neurons: int) -> None:
    """Raise PartitionError unless every neuron appears exactly once."""
    counts = torch.bincount(assign_EF.reshape(-1), minlength=num_neurons)
    if counts.numel() != num_neurons or bool((counts != 1).any()):
        raise PartitionError(f"assignment does not cover {num_neurons} neurons exactly once")


def check_cover(routed_EF: torch.Tensor, shared_S: torch.Tensor, num_neurons: int) -> None:
    """Raise PartitionError unless routed + shared cover every neuron exactly once."""
    check_independent(torch.cat([routed_EF.reshape(-1), shared_S.reshape(-1)]).view(1, -1), num_neurons)


def greedy_balanced_assignment(score_EF: torch.Tensor, per_expert: int) -> torch.Tensor:
    """Repeatedly give the best remaining (expert, neuron) pair until each expert holds `per_expert`
    neurons and each neuron is used at most once. Returns [E, per_expert], rows ascending.

    Ties are broken by (expert, neuron) order, so the result is deterministic."""
    E, F = score_EF.shape
    if E * per_expert > F:
        raise PartitionError(f"{E} experts x {per_expert} neurons exceed the {F} available")
    flat = score_EF.detach().double().reshape(-1).cpu()
    order = torch.argsort(-flat, stable=True).numpy()
    taken = bytearray(F)
    fill = [0] * E
    out = [[] for _ in range(E)]
    remaining = E * per_expert
    for idx in order:
        e, i = divmod(int(idx), F)
        if taken[i] or fill[e] == per_expert:
            continue
        taken[i] = 1
        fill[e] += 1
        out[e].append(i)
        remaining -= 1
        if remaining == 0:
            break
    return torch.sort(torch.tensor(out, dtype=torch.long), dim=1).values
