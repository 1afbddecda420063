"""Recipes that rebuild every shipped weight file: the embedded SD model, the judges, the generators.

Each is a module runnable with ``python -m pipelines.recipes.<name>``; each stores its config and
seed beside the weights it writes. Recipes may import ``erase.data`` (the MiniCanvas renderer,
the digits); nothing else in ``pipelines`` imports from the project.
"""
