"""dms: open driver-monitoring software (head pose -> driver state -> alerts)."""

__version__ = "0.1.0"
