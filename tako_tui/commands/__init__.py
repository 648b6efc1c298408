"""One module per `tako` command or group (`tako_tui.cli` registers them), plus what they share:
`options` (-c, -e) and `frontend` (running a job under the console, a transcript or JSON lines)."""
