"""The HTTP layer: one module per resource (chat, logs, criteria, datasets, jobs, ui, ops), the event framing
(sse), reading requests (bodies), the OpenAPI document (openapi) and the error mapping (errors). A handler parses
every wire input, calls one service and renders its answer; gateway.proxy mounts the handlers behind its
middleware. Must not import torch, transformers, trainer or reward_serving internals.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from gateway.config import GatewaySettings
from gateway.criteria.reward_client import RewardHttp
from gateway.metrics import GatewayMetrics
from gateway.service.chat import ChatService
from gateway.service.criteria import CriteriaService
from gateway.service.datasets import DatasetService
from gateway.service.distill import DistillService
from gateway.service.feedback import FeedbackService
from gateway.service.jobs import JobService
from gateway.store import LogStore


@dataclass(frozen=True)
class Services:
    """What every handler shares: the resolved settings, the services, and the store and metrics behind them.
    The composition root (gateway.cli.open_services) builds them and closes them; handlers only use them."""

    settings: GatewaySettings
    store: LogStore
    metrics: GatewayMetrics
    chat: ChatService
    criteria: CriteriaService
    datasets: DatasetService
    feedback: FeedbackService
    jobs: JobService
    reward: RewardHttp  # the reward-model criteria's client of the reward server(s)
    distill: DistillService  # a judge's stored scores -> a dataset and a training job


Handler = Callable[[Request, Services], Awaitable[Response]]
Route = tuple[str, Handler, str]  # (path, handler, method), in matching order
