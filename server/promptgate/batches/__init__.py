"""Durable batch jobs: store, runner, webhooks."""
