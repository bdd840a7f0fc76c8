"""egresswatch: network egress monitor and privacy firewall for AI clients."""

__version__ = "0.1.0"
