"""The only place that calls torch.distributed: launch env, megatron-core parallel_state, collectives."""
from .collectives import (all_gather_object, all_reduce_, all_reduce_sum, all_to_all, barrier, broadcast_,
                          copy_to_group, gather_seq, group_rank, group_size, is_distributed, reduce_scatter_seq,
                          scatter_seq, world_group)
from .env import LaunchEnv, detect_launch_env
from .state import ParallelState, destroy_parallel, init_parallel, pipeline_stage_ranks, seed_all

__all__ = ["all_gather_object", "all_reduce_", "all_reduce_sum", "all_to_all", "barrier", "broadcast_",
           "copy_to_group", "gather_seq", "group_rank", "group_size", "is_distributed", "reduce_scatter_seq",
           "scatter_seq", "world_group", "LaunchEnv", "detect_launch_env", "ParallelState", "destroy_parallel",
           "init_parallel", "pipeline_stage_ranks", "seed_all"]
