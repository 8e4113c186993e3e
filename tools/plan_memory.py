#!/usr/bin/env python
"""`megatron-moe plan` under its script name (megatron_moe/cli: flags, exit codes; `--help` lists the flags)."""
from megatron_moe.cli import tool

tool("plan")
