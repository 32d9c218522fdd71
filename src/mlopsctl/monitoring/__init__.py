"""Monitoring: data and prediction drift, live quality from late labels, HTML reports, drift triggers."""
