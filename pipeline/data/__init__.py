"""Datasets: the embedded demo generator, download/verification, readers and manifests."""
