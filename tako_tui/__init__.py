"""tako's front ends: the `tako` command line and the Textual console.

Textual is imported only by the modules that show a screen, never at CLI start-up.
"""
