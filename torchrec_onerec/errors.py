"""Exception types shared across the package (kept dependency-free so any module may import them)."""


class ConfigError(ValueError):
    """A configuration file or override that does not match the schema."""
