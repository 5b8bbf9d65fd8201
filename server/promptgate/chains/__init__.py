"""Chains: multi-step executions whose steps feed their outputs to later steps."""
