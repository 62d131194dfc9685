"""Command-line tools over runs of main.py: sweeps, reports, Hessian spectra; and the one helper that launches main.py."""
