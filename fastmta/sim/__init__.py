"""The simulated internet: authoritative DNS + MX hosts on loopback (``fastmta sim serve``).

See ``docs/smtp.md``.  ``SimInternet(world)`` runs it; ``World`` describes it;
``world.expected(address)`` says what a correct MTA must end with for a recipient.
"""

from fastmta.sim.internet import SimInternet
from fastmta.sim.world import Behaviour, Provider, World, WorldSpec, load_world

__all__ = ["SimInternet", "World", "WorldSpec", "Provider", "Behaviour", "load_world"]
