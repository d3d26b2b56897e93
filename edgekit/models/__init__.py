"""Model definitions bundled with edgekit (architectures only; weights come from installed packages)."""
