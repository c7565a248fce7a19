"""Self-drafting heads on the target's hidden state: Medusa (and, later, Hydra, EAGLE)."""

from sdjax.heads.medusa import HeadsConfig, Medusa, MedusaHeads, init_heads, load_heads, save_heads

__all__ = ["HeadsConfig", "Medusa", "MedusaHeads", "init_heads", "load_heads", "save_heads"]
