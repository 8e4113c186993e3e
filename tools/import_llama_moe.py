#!/usr/bin/env python
"""`megatron-moe import-llama-moe` under its script name (megatron_moe/cli: flags, exit codes; `--help` lists the flags)."""
from megatron_moe.cli import tool

tool("import-llama-moe")
