"""Simulation and verification: the numpy golden model, Amaranth and cocotb benches."""
