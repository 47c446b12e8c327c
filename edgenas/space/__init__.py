"""The search space as data (spec, Arch) and an arch's layer-by-layer plan."""
