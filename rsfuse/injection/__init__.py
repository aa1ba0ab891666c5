"""Injection components: the detail-stack router and the gated injector run before chosen decoder layers."""

from rsfuse.injection.gated import GatedInjector
from rsfuse.injection.graft import GraftHandle, graft
from rsfuse.injection.router import Router

__all__ = ["GatedInjector", "GraftHandle", "Router", "graft"]
