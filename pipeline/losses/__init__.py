"""Training losses (torch only): the center loss of the original code."""
