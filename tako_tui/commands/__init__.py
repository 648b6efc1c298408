"""One module per `tako` command group; `tako_tui.cli` registers them."""
