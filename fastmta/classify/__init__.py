"""Bounce qualification around the compiled core: the rule tables it matches and
the synthetic replies for local failures."""
