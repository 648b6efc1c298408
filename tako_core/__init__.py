"""tako's headless core: config, secrets, artifact, SSH, agent and orchestration.

This package never imports Textual and never prints; front ends bring their own output.
Keep this module import-light: the agent zipapp bundles it.
"""

__version__ = "0.1.0"
