"""Helpers for the agent tests: a sample app, packing it, running an agent, a bounded load generator."""
