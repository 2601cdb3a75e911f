"""The SAE itself: one model class for every architecture, the checkpoint formats it is read from and written
to, and hub downloads."""
