"""Profiling stage: measures devices and servers, owns the profile format, its loader and the network model.

Shipped profiles live in profiles/data/<device>/<model>-<input_size>px.json; `python -m profiles --help`
measures, emulates, lists and validates them.
"""
from profiles.network import Network
from profiles.profile import Profile, ProfileNotFoundError, available_devices, load_profile

__all__ = ["Network", "Profile", "ProfileNotFoundError", "available_devices", "load_profile"]
