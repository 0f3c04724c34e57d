"""Client side: the sans-IO session, its asyncio adapter, the presubmission flow,
path resolution UIs and progress into SLEAP's LossViewer.

The pieces most callers need are re-exported here; the LossViewer bridge
(:mod:`sleap_rtc.client.lossviewer`, needs pyzmq) and the terminal display
(:mod:`sleap_rtc.client.display`) are imported from their modules.
"""

from sleap_rtc.client.auth import AuthCheck
from sleap_rtc.client.connection import (
    ConnectionLost,
    HelloRefusedError,
    RemoteError,
    RequestTimeout,
    WorkerConnection,
)
from sleap_rtc.client.flow import PresubmissionFlow
from sleap_rtc.client.resolve import (
    AutoResolver,
    PrefixStore,
    ResolutionFailed,
    Resolver,
    TerminalResolver,
)
from sleap_rtc.client.results import (
    CONNECTION_LOST,
    COULD_NOT_CONNECT,
    LOGIN_REQUIRED,
    FlowResult,
    FlowStatus,
    PresubmissionResult,
)
from sleap_rtc.client.session import ClientSession
from sleap_rtc.client.timeouts import FlowTimeouts
from sleap_rtc.client.training_config import TrainingConfigError, config_to_yaml
from sleap_rtc.client.views import CheckView, Resolution

__all__ = [
    "CONNECTION_LOST",
    "COULD_NOT_CONNECT",
    "LOGIN_REQUIRED",
    "AuthCheck",
    "AutoResolver",
    "CheckView",
    "ClientSession",
    "ConnectionLost",
    "FlowResult",
    "FlowStatus",
    "FlowTimeouts",
    "HelloRefusedError",
    "PrefixStore",
    "PresubmissionFlow",
    "PresubmissionResult",
    "RemoteError",
    "RequestTimeout",
    "Resolution",
    "ResolutionFailed",
    "Resolver",
    "TerminalResolver",
    "TrainingConfigError",
    "WorkerConnection",
    "config_to_yaml",
]
