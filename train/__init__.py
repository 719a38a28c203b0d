"""Training of the CapSAT router: config, data preparation and trainer."""
