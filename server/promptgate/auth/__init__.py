"""Auth: API keys, scopes, workspaces, plans, rate limits and quotas."""
