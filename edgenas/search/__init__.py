"""Architecture search: the problem (costs, constraints), strategies, the whole job."""
