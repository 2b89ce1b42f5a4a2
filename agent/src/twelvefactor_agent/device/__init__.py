"""The device the agent runs on: its A/B boot environment and what it says about itself."""
