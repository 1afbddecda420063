"""Data handed to methods and scorers: MiniCanvas renders, dataset layouts, digits, forget/retain sets."""
