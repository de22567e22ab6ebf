"""Evaluation on top of the runtime: metrics, the digits demo, 2D toy sets and image grids."""
