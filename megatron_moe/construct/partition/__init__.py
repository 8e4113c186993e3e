"""FFN partition methods of LLaMA-MoE expert construction (pure functions over tensors).

    random_partition(F, E, seed)                     -> [E, F/E]   each neuron once
    clustering_partition(W_up_FD, E, metric, seed)   -> [E, F/E]   balanced k-means
    coactivation_partition(A_FF, E, threshold, seed) -> [E, F/E]   METIS + rebalance
    gradient_partition(importance_EF, E)             -> [E, F/E]   greedy balanced
    sharing_inner_partition(importance_EF, F_e)      -> [E, F_e]   overlap allowed
    sharing_inter_partition(importance_EF, F_e, Fs)  -> ([E, F_e], [Fs]) cover once
    upcycle_partition(F, E, g)                       -> [E, F/g]   replicated slices
    build_expert_weights(w1_FD, w3_FD, w2_DF, assign_EF) -> (w1_EFD, w3_EFD, w2_EDF)
"""
from .assign import balanced_assign
from .clustering import balanced_kmeans, clustering_partition, kmeans_cost
from .coactivation import coactivation_partition, coactivation_update
from .common import (PartitionError, assignment_to_labels, check_cover, check_independent,
                     greedy_balanced_assignment, labels_to_assignment)
from .experts import build_expert_weights, build_shared_weights, experts_sum, swiglu_ffn
from .gradient import gradient_partition, importance_update
from .random import random_partition
from .sharing import sharing_inner_partition, sharing_inter_partition
from .upcycle import upcycle_partition

METHODS = ("random", "clustering", "co-activation", "gradient", "sharing-inner", "sharing-inter", "upcycle")
DATA_DRIVEN = ("co-activation", "gradient", "sharing-inner", "sharing-inter")
INDEPENDENT = ("random", "clustering", "co-activation", "gradient")

__all__ = [
    "METHODS", "DATA_DRIVEN", "INDEPENDENT", "PartitionError", "balanced_assign", "balanced_kmeans",
    "clustering_partition", "kmeans_cost", "coactivation_partition", "coactivation_update",
    "assignment_to_labels", "check_cover", "check_independent", "greedy_balanced_assignment",
    "labels_to_assignment", "build_expert_weights", "build_shared_weights", "experts_sum", "swiglu_ffn",
    "gradient_partition", "importance_update", "random_partition", "sharing_inner_partition",
    "sharing_inter_partition", "upcycle_partition",
]
