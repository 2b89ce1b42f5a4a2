"""Agent configuration: the TOML file, the managed overlay, its apply/confirm/revert machine."""
