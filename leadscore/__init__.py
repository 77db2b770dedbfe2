"""leadscore: lead conversion prediction for education CRMs."""

__version__ = "0.1.0"
