"""Prompts: templates, immutable versions, release tags and typed inputs."""
