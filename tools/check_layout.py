#!/usr/bin/env python
"""`megatron-moe check-layout` under its script name (megatron_moe/cli: flags, exit codes; `--help` lists the flags)."""
from megatron_moe.cli import tool

tool("check-layout")
