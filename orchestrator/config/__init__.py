"""Robot configuration: models, loading with precise errors, and the topology graph."""

from orchestrator.config.loader import LoadedConfig, load_config, parse_config
from orchestrator.config.models import (
    BrokerConfig,
    EmbeddedBroker,
    PartConfig,
    ResourceConfig,
    Restart,
    RestartPolicy,
    RobotConfig,
)
from orchestrator.config.topology import Problem, ResourceRef, Topology

__all__ = [
    "BrokerConfig",
    "EmbeddedBroker",
    "LoadedConfig",
    "PartConfig",
    "Problem",
    "ResourceConfig",
    "ResourceRef",
    "Restart",
    "RestartPolicy",
    "RobotConfig",
    "Topology",
    "load_config",
    "parse_config",
]
