"""Experiments that compose the commands: the paper's grid and transfer protocol, the demo and its report."""
