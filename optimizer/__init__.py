"""The central service: it signs and publishes the plans edges run (and, as it grows,
estimates demand, optimises, validates in simulation and arbitrates overrides)."""
