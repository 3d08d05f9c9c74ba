"""The client SDK: ``RobotClient`` (async), ``SyncRobotClient``, remote resource proxies, awaitable moves."""

from orchestrator.client.moves import complete, until_stopped
from orchestrator.client.proxy import ListedResource, RemoteResource, make_proxy, proxy_class
from orchestrator.client.robot_client import RobotClient
from orchestrator.client.sync import SyncResource, SyncRobotClient

__all__ = [
    "ListedResource",
    "RemoteResource",
    "RobotClient",
    "SyncResource",
    "SyncRobotClient",
    "complete",
    "make_proxy",
    "proxy_class",
    "until_stopped",
]
