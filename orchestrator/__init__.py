"""orchestrator: run a robot made of several parts over a local MQTT broker, safely.

The public surface; everything else is private machinery.
"""

from orchestrator.config import LoadedConfig, RobotConfig, Topology, load_config, parse_config
from orchestrator.errors import (
    BrokerUnavailable,
    ConfigError,
    ConnectionLost,
    DeadlineExceeded,
    InternalError,
    InvalidArgument,
    OrchestratorError,
    PartOffline,
    PortInUse,
    ProtocolError,
    SessionExpired,
    UnknownMethod,
    UnknownModel,
    UnknownResource,
)
from orchestrator.resources import (
    API,
    Actuator,
    Base,
    Generic,
    Gripper,
    Model,
    Motor,
    Registry,
    Resource,
    Sensor,
    Servo,
    actuating,
)

__version__ = "0.1.0"

__all__ = [
    "API",
    "Actuator",
    "Base",
    "BrokerUnavailable",
    "ConfigError",
    "ConnectionLost",
    "DeadlineExceeded",
    "Generic",
    "Gripper",
    "InternalError",
    "InvalidArgument",
    "LoadedConfig",
    "Model",
    "Motor",
    "OrchestratorError",
    "PartOffline",
    "PortInUse",
    "ProtocolError",
    "Registry",
    "Resource",
    "RobotConfig",
    "Sensor",
    "Servo",
    "SessionExpired",
    "Topology",
    "UnknownMethod",
    "UnknownModel",
    "UnknownResource",
    "__version__",
    "actuating",
    "load_config",
    "parse_config",
]
