"""One module per capability; each registers its workflows with ``build.register``."""
