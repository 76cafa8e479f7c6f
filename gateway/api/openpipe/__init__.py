"""OpenPipe's API (`https://api.openpipe.ai/api/v1`) at /api/v1, so code written for OpenPipe's SDK or HTTP API runs
against rewardgate by changing OPENPIPE_BASE_URL: OpenPipe's paths, shapes (gateway.api.openpipe.protocol) and error
envelope (gateway.api.errors.openpipe_envelope, chosen for these routes by gateway.proxy), as thin handlers over the
same services as /v1 (gateway.api.openpipe.routes). The README's "OpenPipe API" table lists every OpenPipe endpoint,
supported or not, and what differs. Must not import torch, trainer or reward_serving internals.
"""

from __future__ import annotations

from gateway.api.openpipe.routes import PREFIX, ROUTES

__all__ = ["PREFIX", "ROUTES"]
