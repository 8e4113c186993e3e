"""Mixture-of-Experts layer: route -> dispatch -> compute -> combine (see docs/moe.md)."""
from .aux import AuxLossInjector, attach_aux_loss, cv_squared
from .dispatcher import Dispatcher, apply_capacity
from .experts import Experts
from .layer import MoELayer
from .router import Router, Routing
from .shared import SharedExperts

__all__ = ["AuxLossInjector", "attach_aux_loss", "cv_squared", "Dispatcher", "apply_capacity", "Experts",
           "MoELayer", "Router", "Routing", "SharedExperts"]
