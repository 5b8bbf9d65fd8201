"""Provider adapters: one module per provider API, behind ``base.Provider``."""
