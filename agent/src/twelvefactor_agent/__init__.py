"""twelvefactor device agent.

The version has one source, this line: agent/pyproject.toml reads it
(setuptools' dynamic version), and the Yocto recipe's PV is checked against
it. A literal rather than importlib.metadata: that import alone costs the
agent over 1 MB of resident memory on the device.
"""

__version__ = "0.1.0"
