"""Platform scripts kept for compatibility."""
