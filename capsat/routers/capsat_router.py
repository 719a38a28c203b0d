"""Registers the CapSAT router (it lives in ``capsat.capsat_model``) under the name "capsat"."""
from ..capsat_model.router import CapsatRouter  # noqa: F401
