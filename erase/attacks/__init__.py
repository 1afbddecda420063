"""Adversarial prompt attacks on erased models: UnlearnDiffAtk (discrete tokens) and its soft-prompt bound."""
