"""The only place that touches process groups: launch env, megatron-core parallel_state, autograd collectives."""
from .collectives import (all_gather_object, all_reduce_sum, all_to_all, copy_to_group, gather_seq, group_rank,
                          group_size, reduce_scatter_seq, scatter_seq)
from .env import LaunchEnv, detect_launch_env
from .state import ParallelState, destroy_parallel, init_parallel, seed_all

__all__ = ["all_gather_object", "all_reduce_sum", "all_to_all", "copy_to_group", "gather_seq", "group_rank",
           "group_size", "reduce_scatter_seq", "scatter_seq", "LaunchEnv", "detect_launch_env", "ParallelState",
           "destroy_parallel", "init_parallel", "seed_all"]
