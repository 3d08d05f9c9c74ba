"""The client SDK: ``RobotClient`` and remote resource proxies."""

from orchestrator.client.proxy import RemoteResource, make_proxy, proxy_class
from orchestrator.client.robot_client import RobotClient

__all__ = ["RemoteResource", "RobotClient", "make_proxy", "proxy_class"]
