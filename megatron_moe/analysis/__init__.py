"""Analysis of trained/converted models: expert load per layer and domain, plots, checkpoint inspection."""
