"""SSH to the servers: pooled connections, exec streaming, SFTP; the agent: its client over the unix-socket
channel, its zipapp, installing and starting it."""

from tako_core.transport.agent_setup import ensure_agent
from tako_core.transport.connection import Completed, Connection
from tako_core.transport.failures import AgentNotRunning

__all__ = ["AgentNotRunning", "Completed", "Connection", "ensure_agent"]
