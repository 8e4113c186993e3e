"""`python -m megatron_moe.cli COMMAND ...` (same as the `megatron-moe` console script)."""
from . import main

main()
