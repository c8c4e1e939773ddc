"""Pure AMR-SD maths: no engine, network, clock or logging.

The hyper-parameters live in `ScoringConfig`, which is part of the wire contract
(`amr_client.schemas`) so a request can override them; it is re-exported here for readers of the
algorithm.
"""

from amr_client.schemas import ScoringConfig

__all__ = ["ScoringConfig"]
